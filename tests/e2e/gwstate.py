"""Reads and rewrites godwit state files (docs/state-format.md) so tests can build
snapshots that are wrong in one precise way, with every CRC still correct; frames and
receives the same records on migration sockets (gwproxy.py, fake peers)."""
import struct

MAGIC = b"GODWIT\r\n"
CONFIG, SECTION, PAGES, END = 1, 2, 3, 4
# the migration protocol version (src/migration/proto.h MIG_PROTOCOL_VERSION)
PROTOCOL = 4


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def record(typ, payload=b""):
    """One record as docs/state-format.md frames it: type, length, header CRC, payload and
    a CRC over header and payload."""
    h = struct.pack("<IQ", typ, len(payload))
    h += struct.pack("<I", crc32c(h))
    return h + payload + struct.pack("<I", crc32c(payload, crc32c(h)))


def recv_exact(sock, n):
    """n bytes from a socket; EOFError if it closes first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def record_recv(sock):
    """The next record on a socket: (type, payload, the record's bytes as received)."""
    hdr = recv_exact(sock, 16)
    typ, length = struct.unpack_from("<IQ", hdr)
    rest = recv_exact(sock, length + 4)
    return typ, rest[:-4], hdr + rest


def read(path):
    """Returns (header bytes, [(type, payload)])."""
    with open(path, "rb") as f:
        data = f.read()
    hdr = data[:32]
    assert hdr[:8] == MAGIC
    recs, off = [], 32
    while off < len(data):
        typ, length = struct.unpack_from("<IQ", data, off)
        payload = data[off + 16:off + 16 + length]
        recs.append((typ, payload))
        off += 16 + length + 4
    return hdr, recs


def write(path, hdr, recs, fix_end=True):
    out = bytearray(hdr)
    for n, (typ, payload) in enumerate(recs):
        if typ == END and fix_end:
            payload = struct.pack("<Q", n)
        out += record(typ, payload)
    with open(path, "wb") as f:
        f.write(out)


def header(version=2, page_size=4096, kind=1):
    h = MAGIC + struct.pack("<IIIII", version, page_size, kind, 0, 0)
    return h + struct.pack("<I", crc32c(h))


def _str(p, off):
    n = struct.unpack_from("<I", p, off)[0]
    return p[off + 4:off + 4 + n], off + 4 + n


def section_parse(p):
    name, off = _str(p, 0)
    inst, off = _str(p, off)
    ver = struct.unpack_from("<I", p, off)[0]
    data, off = _str(p, off + 4)
    return name.decode(), inst.decode(), ver, data


def section_build(name, inst, ver, data):
    def s(b):
        return struct.pack("<I", len(b)) + b
    return s(name.encode()) + s(inst.encode()) + struct.pack("<I", ver) + s(data)


def config_cpuid_patch(p, function, index, reg, set_bits):
    """Sets bits in one CPUID register (0 eax .. 3 edx) of a CONFIG payload."""
    p = bytearray(p)
    off = 8
    nvcpus, nreg = struct.unpack_from("<II", p, off)
    off += 8 + nreg * 16
    ncpuid = struct.unpack_from("<I", p, off)[0]
    off += 4
    for i in range(ncpuid):
        e = off + i * 28
        fn, idx = struct.unpack_from("<II", p, e)
        if fn == function and idx == index:
            r = e + 12 + reg * 4
            struct.pack_into("<I", p, r, struct.unpack_from("<I", p, r)[0] | set_bits)
            return bytes(p)
    raise KeyError(f"no CPUID leaf {function:#x}.{index}")


def config_machine_patch(p, tsc_khz=None, xsave_size=None):
    """Sets the CONFIG payload's u32 tsc_khz and u32 xsave_size (right after the kernel)."""
    off = 8
    _, nreg = struct.unpack_from("<II", p, off)
    off += 8 + nreg * 16
    off += 4 + struct.unpack_from("<I", p, off)[0] * 28
    off += 4 + struct.unpack_from("<I", p, off)[0] * 4
    _, off = _str(p, off)
    _, off = _str(p, off)
    tsc, xs = struct.unpack_from("<II", p, off)
    return p[:off] + struct.pack("<II", tsc if tsc_khz is None else tsc_khz,
                                 xs if xsave_size is None else xsave_size) + p[off + 8:]


def section_patch(recs, name, fn):
    """recs with the payload of every section called name replaced by fn(payload)."""
    out = []
    for typ, p in recs:
        if typ == SECTION and section_parse(p)[0] == name:
            n, inst, ver, data = section_parse(p)
            p = section_build(n, inst, ver, fn(data))
        out.append((typ, p))
    return out


def delta_past(payload):
    """The PAGES payload with its first delta of 2+ bytes made hostile (its first run a skip
    of 16383 bytes, past the page's end), or None (proxies' delta:past)."""
    count, flags = struct.unpack_from("<II", payload)
    if flags != 0x2:        # DELTA without ZSTD
        return None
    data = 8 + 16 * count
    for i in range(count):
        _, pflags, length = struct.unpack_from("<QII", payload, 8 + 16 * i)
        if pflags == 0x2 and length >= 2:
            out = bytearray(payload)
            out[data:data + 2] = b"\xff\x7f"    # ULEB128 16383
            return bytes(out)
        data += length
    return None
