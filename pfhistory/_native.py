"""The only importer of the compiled module: column decoding and the live ioctl.

Everything else in pfhistory goes through the functions here, so the cffi
objects never leak past this module.
"""

import struct

from pfhistory._pfh import ffi, lib

__all__ = [
    "RECORD_SIZE",
    "U64_COLUMNS",
    "NUM_COLUMNS",
    "BLOB_FIELDS",
    "Columns",
    "decode",
    "fetch_live",
    "record_size",
    "field_offset",
]

RECORD_SIZE = lib.PFH_RECORD_SIZE
_WIDTH = lib.PFH_BLOB_WIDTH
_unpack_blob = struct.Struct(f"{_WIDTH}s").iter_unpack


def _enum(prefix, exclude=()):
    """Map lower-case column names to their index, read from the C enum."""
    return {
        name[len(prefix):].lower(): getattr(lib, name)
        for name in dir(lib)
        if name.startswith(prefix) and name[len(prefix):] not in exclude
    }


U64_COLUMNS = _enum("PFH_U64_", exclude=("NCOLUMNS",))
NUM_COLUMNS = _enum("PFH_NUM_", exclude=("NCOLUMNS",))
BLOB_FIELDS = _enum("PFH_BLOB_", exclude=("NCOLUMNS", "WIDTH"))

_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)
_NO_OFFSET = int(ffi.cast("size_t", -1))


class Columns:
    """Decoded values of n records, one Python list per field, made on demand.

    Lists are built only for the fields a caller asks for, so a collector that
    needs addresses only for new states does not pay for them otherwise.
    """

    __slots__ = ("n", "_u64", "_num", "_blob", "_cache")

    def __init__(self, n, u64, num, blob):
        self.n = n
        self._u64 = u64
        self._num = num
        self._blob = blob
        self._cache = {}

    def __getitem__(self, name):
        """The list of host-order values (or 16-byte strings) of one field."""
        try:
            return self._cache[name]
        except KeyError:
            pass
        n = self.n
        if name in NUM_COLUMNS:
            c = NUM_COLUMNS[name]
            values = self._num[c * n:(c + 1) * n].tolist()
        elif name in U64_COLUMNS:
            c = U64_COLUMNS[name]
            values = self._u64[c * n:(c + 1) * n].tolist()
        elif name in BLOB_FIELDS:
            c = BLOB_FIELDS[name]
            values = [v for (v,) in _unpack_blob(self._blob[c * n * _WIDTH:(c + 1) * n * _WIDTH])]
        else:
            raise KeyError(name)
        self._cache[name] = values
        return values

    def names(self):
        """Every field name, in C declaration order within each group."""
        return [*U64_COLUMNS, *NUM_COLUMNS, *BLOB_FIELDS]


def decode(buf):
    """Decode a bytes-like object holding whole 264-byte records into Columns."""
    n = len(buf) // RECORD_SIZE
    if n == 0:
        return Columns(0, memoryview(b"").cast("Q"), memoryview(b"").cast("q"), b"")
    u64 = _new_uncleared("uint64_t[]", n * lib.PFH_U64_NCOLUMNS)
    num = _new_uncleared("int64_t[]", n * lib.PFH_NUM_NCOLUMNS)
    blob = _new_uncleared("uint8_t[]", n * lib.PFH_BLOB_NCOLUMNS * _WIDTH)
    lib.pfh_decode(ffi.from_buffer(buf), n, u64, num, blob)
    return Columns(
        n,
        memoryview(ffi.buffer(u64)).cast("B").cast("Q"),
        memoryview(ffi.buffer(num)).cast("B").cast("q"),
        memoryview(ffi.buffer(blob)),
    )


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
