"""The only importer of the compiled module: decoding, pfctl text, live ioctl.

Everything else in pfhistory goes through the functions here, so the cffi
objects never leak past this module.
"""

import struct
from array import array

from pfhistory._pfh import ffi, lib

__all__ = [
    "RECORD_SIZE",
    "TEXT_MAX",
    "U64_COLUMNS",
    "NUM_COLUMNS",
    "INTERNED_FIELDS",
    "Columns",
    "decode",
    "NameTable",
    "format_records",
    "pack",
    "pack_keys",
    "sort_by_id",
    "fetch_live",
    "record_size",
    "field_offset",
]

RECORD_SIZE = lib.PFH_RECORD_SIZE
TEXT_MAX = lib.PFH_TEXT_MAX
UNIQ_IFNAME = lib.PFH_UNIQ_IFNAME
UNIQ_ADDR = lib.PFH_UNIQ_ADDR


def _enum(prefix, exclude=()):
    """Map lower-case column names to their index, read from the C enum."""
    return {
        name[len(prefix):].lower(): getattr(lib, name)
        for name in dir(lib)
        if name.startswith(prefix) and name[len(prefix):] not in exclude
    }


U64_COLUMNS = _enum("PFH_U64_", exclude=("NCOLUMNS",))
NUM_COLUMNS = _enum("PFH_NUM_", exclude=("NCOLUMNS",))
# 16-byte fields, handed out as bytes through their *_ref column.
INTERNED_FIELDS = tuple(name[:-4] for name in NUM_COLUMNS if name.endswith("_ref"))

_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)
_NO_OFFSET = int(ffi.cast("size_t", -1))
_unpack_uniq = struct.Struct(f"BB{lib.PFH_UNIQ_SIZE - 2}s").iter_unpack
_unpack_records = struct.Struct(f"{RECORD_SIZE}s").iter_unpack


class Columns:
    """Decoded values of n records, one Python list per field, made on demand.

    Lists are built only for the fields a caller asks for, so a collector that
    needs addresses only for new states does not pay for them otherwise.
    ``uniq`` lists the distinct 16-byte values as (kind, af, bytes); each
    ``<field>_ref`` column indexes it, and ``<field>`` gives the bytes.
    ``record`` gives each record's 264 bytes as they were read.
    """

    __slots__ = ("n", "_stride", "_u64", "_num", "_uniq", "_data", "_cache", "extras",
                 "__weakref__")

    def __init__(self, n, stride, u64, num, uniq, data):
        self.n = n
        self._stride = stride
        self._u64 = u64
        self._num = num
        self._uniq = uniq
        self._data = data
        self._cache = {}
        self.extras = {}  # what callers derive once per chunk (pfhistory.pf's objects)

    @property
    def data(self):
        """The whole records these columns were decoded from."""
        return self._data

    def record(self, i):
        """Record i's 264 bytes."""
        return bytes(self._data[i * RECORD_SIZE:(i + 1) * RECORD_SIZE])

    @property
    def uniq(self):
        """The distinct 16-byte values: (kind, af, 16 bytes) tuples."""
        values = self._cache.get("uniq")
        if values is None:
            values = self._cache["uniq"] = list(_unpack_uniq(self._uniq))
        return values

    def __getitem__(self, name):
        """The list of host-order values (or 16-byte strings) of one field."""
        try:
            return self._cache[name]
        except KeyError:
            pass
        n, stride = self.n, self._stride
        if name in NUM_COLUMNS:
            start = NUM_COLUMNS[name] * stride
            values = self._num[start:start + n].tolist()
        elif name in U64_COLUMNS:
            start = U64_COLUMNS[name] * stride
            values = self._u64[start:start + n].tolist()
        elif name in INTERNED_FIELDS:
            raw = [value for _kind, _af, value in self.uniq]
            values = list(map(raw.__getitem__, self[name + "_ref"]))
        elif name == "uniq":
            return self.uniq
        elif name == "record":
            values = [r for (r,) in _unpack_records(self._data)]
        else:
            raise KeyError(name)
        self._cache[name] = values
        return values

    def names(self):
        """Every field name: numbers, then the 16-byte fields."""
        return [*U64_COLUMNS, *NUM_COLUMNS, *INTERNED_FIELDS]


def decode(buf):
    """Decode a bytes-like object holding whole 264-byte records into Columns."""
    n = len(buf) // RECORD_SIZE
    if n == 0:
        empty = memoryview(b"")
        return Columns(0, 0, empty.cast("Q"), empty.cast("q"), b"", b"")
    stride = lib.pfh_column_stride(n)
    u64 = _new_uncleared("uint64_t[]", stride * lib.PFH_U64_NCOLUMNS)
    num = _new_uncleared("int64_t[]", stride * lib.PFH_NUM_NCOLUMNS)
    uniq = _new_uncleared("uint8_t[]", n * lib.PFH_UNIQ_PER_RECORD * lib.PFH_UNIQ_SIZE)
    count = lib.pfh_decode(ffi.from_buffer(buf), n, stride, u64, num, uniq)
    if count == _NO_OFFSET:
        raise MemoryError("decoding state records")
    return Columns(
        n,
        stride,
        memoryview(ffi.buffer(u64)).cast("B").cast("Q"),
        memoryview(ffi.buffer(num)).cast("B").cast("q"),
        ffi.buffer(uniq, count * lib.PFH_UNIQ_SIZE)[:],
        buf[:n * RECORD_SIZE],
    )


class NameTable:
    """IP protocol names for pfh_format(), kept alive as C strings."""

    def __init__(self, names):
        self._strings = []
        self.table = ffi.new("char *[256]")
        for number, name in names.items():
            raw = name.encode("ascii")
            if 0 <= number < 256 and 0 < len(raw) <= lib.PFH_PROTONAME_MAX:
                s = ffi.new("char[]", raw)
                self._strings.append(s)
                self.table[number] = s


def format_records(buf, verbose, names):
    """pfctl's text (str) for whole 264-byte records at verbosity 0, 1 or 2."""
    n = len(buf) // RECORD_SIZE
    if n == 0:
        return ""
    out = _new_uncleared("char[]", n * TEXT_MAX)
    size = lib.pfh_format(ffi.from_buffer(buf), n, verbose, names.table, out)
    return ffi.buffer(out, size)[:].decode("ascii")


def pack(rows, count, fmt, keys, forms):
    """count records (bytes) from rows, a buffer of native 64-bit slots (see
    pfh_pack in pfh.h for fmt); keys: an ascending array('q') whose 16-byte
    forms (bytes) the 'A' fields are written as."""
    if count == 0:
        return b""
    out = _new_uncleared("uint8_t[]", count * RECORD_SIZE)
    done = lib.pfh_pack(ffi.from_buffer("int64_t[]", rows), count, fmt.encode("ascii"),
                        ffi.from_buffer("int64_t[]", keys), forms, len(keys), out)
    if done == _NO_OFFSET:
        raise ValueError(f"{fmt!r} does not make a state record")
    if done != count:
        raise KeyError(f"row {done} has an address key that keys lack")
    return ffi.buffer(out)[:]


def pack_keys(rows, count, fmt):
    """The distinct keys of the 'A' fields of rows (as pack() takes them),
    ascending, as an array('q')."""
    if count == 0:
        return array("q")
    keys = _new_uncleared("int64_t[]", count * fmt.count("A"))
    n = lib.pfh_pack_keys(ffi.from_buffer("int64_t[]", rows), count, fmt.encode("ascii"), keys)
    if n == _NO_OFFSET:
        raise ValueError(f"{fmt!r} does not make a state record")
    if n == _NO_OFFSET - 1:
        raise MemoryError("collecting address keys")
    out = array("q")
    out.frombytes(ffi.buffer(keys, n * 8))
    return out


def sort_by_id(records):
    """Whole records in the order the kernel lists states: by id, then creatorid."""
    count = len(records) // RECORD_SIZE
    if count < 2:
        return bytes(records)
    out = _new_uncleared("uint8_t[]", count * RECORD_SIZE)
    if lib.pfh_sort_by_id(ffi.from_buffer(records), count, out) != 0:
        raise MemoryError("sorting state records")
    return ffi.buffer(out)[:]


def fetch_live(fd):
    """Return the live table's records from an open /dev/pf descriptor.

    Returns (status, errno, data): status is "ok", "unsupported" (not built
    for OpenBSD) or "error" (a system call failed with errno).
    """
    buf_out = ffi.new("uint8_t **")
    len_out = ffi.new("size_t *")
    errno_out = ffi.new("int *")
    rc = lib.pfh_fetch_states(fd, buf_out, len_out, errno_out)
    if rc == lib.PFH_ENOTSUPPORTED:
        return "unsupported", errno_out[0], b""
    if rc != lib.PFH_OK:
        return "error", errno_out[0], b""
    if buf_out[0] == ffi.NULL:
        return "ok", 0, b""
    try:
        return "ok", 0, ffi.buffer(buf_out[0], len_out[0])[:]
    finally:
        lib.pfh_free(buf_out[0])


def record_size():
    """sizeof our C declaration of struct pfsync_state."""
    return lib.pfh_record_size()


def field_offset(name):
    """offsetof a field ("rule", "key.rdomain", "peer.mss", "scrub.pfss_ttl")."""
    off = lib.pfh_offset(name.encode())
    if off == _NO_OFFSET:
        raise KeyError(name)
    return off
