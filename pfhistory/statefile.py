"""`pfctl -S` state files: OpenBSD's 264-byte records back to back, no header.

Reads them in chunks (a million-state file never sits in memory whole) and
refuses, with one sentence, anything that is not such a file.
"""

import errno
import os
import shlex
import stat

from pfhistory import _native
from pfhistory.exceptions import StateFileError
from pfhistory.pfvar import OPENBSD_AF_INET, OPENBSD_AF_INET6, PF_IN, PF_OUT

__all__ = ["RECORD_SIZE", "FOREIGN_RECORD_SIZES", "open_state_file", "read_chunks",
           "check_columns", "write_state_file"]

RECORD_SIZE = _native.RECORD_SIZE

# Record sizes of other releases and systems (pf-formats.md sections 2 and 6).
FOREIGN_RECORD_SIZES = {
    224: "OpenBSD's pfsync v2 record (OpenBSD 3.7 to about 4.1)",
    240: "OpenBSD's record of about OpenBSD 4.2 to 4.4",
    242: "FreeBSD's pfsync_state_1301 record (also OpenBSD 4.5)",
    277: "FreeBSD 14's pfsync_state_1400 record",
    360: "FreeBSD 15's pfsync_state_1500 record",
}

_VALID_AF = frozenset((OPENBSD_AF_INET, OPENBSD_AF_INET6))
_VALID_DIRECTION = frozenset((PF_IN, PF_OUT))


def _size_error(path, size):
    """The sentence for a file whose size is not a whole number of records."""
    fits = [f"{n}-byte records ({what})" for n, what in FOREIGN_RECORD_SIZES.items()
            if size % n == 0]
    hint = (f"; its size would fit {' or '.join(fits)}" if fits else "")
    return StateFileError(
        f"{path}: {size} bytes is not a whole number of {RECORD_SIZE}-byte OpenBSD "
        f"state records ({size % RECORD_SIZE} bytes left over){hint}; "
        f"224/240/242/277/360-byte records belong to other OpenBSD releases or to "
        f"FreeBSD, which pfhistory does not read")


def _capture_error(path, fd):
    """The sentence for a pcap or pcapng capture given as a state file (the
    pfsync traffic of the same firewall, recorded another way), else None."""
    from pfhistory.capture import is_capture

    try:
        head = os.pread(fd, 4, 0)
    except OSError:
        return None
    if not is_capture(head):
        return None
    return StateFileError(f"{path}: is a pcap capture, not a pfctl -S state file; "
                          f"record a capture of pfsync traffic with "
                          f"pfhistory collect --from-pcap {shlex.quote(path)}")


def open_state_file(path):
    """Open a state file for reading; return (file object, number of records)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise StateFileError(f"{path}: no such state file") from None
    except IsADirectoryError:
        raise StateFileError(f"{path}: is a directory, not a pfctl -S state file") from None
    except PermissionError:
        raise StateFileError(f"{path}: permission denied reading the state file") from None
    except OSError as e:
        raise StateFileError(f"{path}: cannot open the state file: {e.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(st.st_mode):
        problem = StateFileError(f"{path}: is a directory, not a pfctl -S state file")
    elif not stat.S_ISREG(st.st_mode):
        problem = StateFileError(f"{path}: not a regular file; give a pfctl -S state file")
    elif st.st_size % RECORD_SIZE:
        problem = _capture_error(path, fd) or _size_error(path, st.st_size)
    if problem is not None:
        os.close(fd)
        raise problem
    return os.fdopen(fd, "rb", buffering=0), st.st_size // RECORD_SIZE


def read_chunks(path, chunk_records=16384):
    """Yield (index of first record, bytes) chunks of whole records."""
    f, total = open_state_file(path)
    with f:
        index = 0
        size = chunk_records * RECORD_SIZE
        while True:
            try:
                data = f.read(size)
            except OSError as e:
                if e.errno == errno.EISDIR:
                    raise StateFileError(f"{path}: is a directory") from None
                raise StateFileError(f"{path}: read failed: {e.strerror}") from None
            if not data:
                break
            if len(data) % RECORD_SIZE:
                # The file shrank or grew while we read it.
                raise _size_error(path, index * RECORD_SIZE + len(data))
            yield index, data
            index += len(data) // RECORD_SIZE
        if index != total:
            raise StateFileError(
                f"{path}: changed while being read ({total} records expected, {index} read)")


# Why a table with two records of one state is refused (the collector finds
# them as it records; a check before recording, as it reads).
TWO_RECORDS_OF_ONE_STATE = ("holds two records of one state (same creatorid and id); "
                            "not a consistent state table, nothing recorded")


def check_columns(columns, origin, first_index=0):
    """Refuse records no OpenBSD kernel exports: af not 2/24, direction not in/out.

    A file of the right size but another format would otherwise decode to
    garbage; the kernel's own import (pf_state_import) rejects the same.
    """
    for name, valid in (("af", _VALID_AF), ("wire_af", _VALID_AF),
                        ("stack_af", _VALID_AF), ("direction", _VALID_DIRECTION)):
        values = columns[name]
        if set(values) <= valid:
            continue
        for i, v in enumerate(values):
            if v not in valid:
                n = first_index + i
                field = name.replace("_", " ")
                raise StateFileError(
                    f"{origin}: record {n} (byte offset {n * RECORD_SIZE}) is not an "
                    f"OpenBSD PF state ({field} is {v}); this is not a pfctl -S state file")


def write_state_file(path, records, mtime=None):
    """Write records owner-only (0600), atomically via a temporary file.

    records is bytes or an iterable of bytes (written with writelines, so a
    million records need not be joined first); mtime dates the file.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            if isinstance(records, (bytes, bytearray, memoryview)):
                f.write(records)
            else:
                f.writelines(records)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
