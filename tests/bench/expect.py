"""The bench harness tests' one check: prints ok/FAIL per case and counts the failures."""


class Expect:
    def __init__(self):
        self.failures = 0

    def __call__(self, name, got, want):
        ok = got == want
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": got {got!r}, want {want!r}"))
        self.failures += not ok

    def result(self):
        print(f"{self.failures} failed")
        return 1 if self.failures else 0
