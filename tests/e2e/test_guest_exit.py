#!/usr/bin/env python3
"""A guest's reset and power-off end `godwit run` with status 0: the i8042 reset pulse
(0xfe to port 0x64, Linux's reboot=k), the reset control register (0xcf9, reboot=p) and the
ACPI sleep control port with \\_S5 (poweroff). Each guest is a few instructions in a PVH ELF
written here; a guest that only halts shows that nothing else ends the run."""
import struct
import time

import gwtest

LOAD = 0x100000

# 32-bit protected-mode code, each ending in hlt; jmp back to the hlt
PROGRAMS = {
    "kbd-reset": bytes([0xb0, 0xfe, 0xe6, 0x64]),                          # out 0x64, 0xfe
    "cf9-reset": bytes([0xb0, 0x06, 0x66, 0xba, 0xf9, 0x0c, 0xee]),        # out 0xcf9, 0x06
    "poweroff": bytes([0xb0, 0x34, 0x66, 0xba, 0x00, 0x06, 0xee]),         # out 0x600, 0x34
    "halt": b"",
}


def pvh_elf(code):
    """An ELF32 with one PT_LOAD at 1 MiB and the Xen PVH entry note pointing at it."""
    code = code + bytes([0xf4, 0xeb, 0xfd])
    note = struct.pack("<III4sI", 4, 4, 18, b"Xen\0", LOAD)
    ehdr_len, phdr_len = 52, 32
    code_off = ehdr_len + 2 * phdr_len
    note_off = code_off + len(code)
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1, LOAD,
                       ehdr_len, 0, 0, ehdr_len, phdr_len, 2, 40, 0, 0)
    load = struct.pack("<IIIIIIII", 1, code_off, LOAD, LOAD, len(code), len(code), 5, 4)
    pnote = struct.pack("<IIIIIIII", 4, note_off, 0, 0, len(note), len(note), 4, 4)
    return ehdr + load + pnote + code + note


def test(env):
    for name, code in PROGRAMS.items():
        path = env.path(f"{name}.elf")
        with open(path, "wb") as f:
            f.write(pvh_elf(code))
        vm = env.vm(name, kernel=path, cmdline="")
        if name == "halt":
            vm.wait_socket()
            time.sleep(2)
            assert vm.proc.poll() is None, f"a halted guest ended the run: {vm.stderr()}"
            vm.ctl("stop")
            assert vm.wait_exit() == 0
            continue
        rc = vm.wait_exit(timeout=30)
        err = vm.stderr()
        assert rc == 0, f"{name}: godwit run exited {rc}: {err}"
        want = "powered off" if name == "poweroff" else "reset the machine"
        assert want in err, f"{name}: no '{want}' in stderr: {err}"
        assert "unhandled" not in err, f"{name}: {err}"


gwtest.main(test)
