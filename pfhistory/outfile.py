"""Where a new output file goes (reports, pcap captures): one rule for all.

A regular file, or a new one, is replaced whole: written to an owner-only
temporary file beside it and renamed over it when complete, so nobody reads
half of it and a failed run leaves the old one. A device or FIFO cannot be
replaced: it is written in place. A descriptor the shell handed us
(/dev/stdout, /dev/fd/N) is written through a copy of it, so `>> log` keeps
appending. Any other symbolic link is refused: followed from a shared
directory it would write wherever it points.
"""

import errno
import os
import re
import stat

__all__ = ["replaces", "open_output", "commit", "discard"]

_INHERITED = re.compile(r"/dev/(?:std(in|out|err)|fd/(\d+))|/proc/self/fd/(\d+)")
_STD = {"in": 0, "out": 1, "err": 2}


def _inherited_fd(path):
    m = _INHERITED.fullmatch(path)
    if m is None:
        return None
    return _STD[m.group(1)] if m.group(1) else int(m.group(2) or m.group(3))


def replaces(path):
    """True if path is written to a temporary file renamed over it; False if in
    place (a device, a FIFO, an inherited descriptor). OSError (its strerror a
    phrase for a person) for a symbolic link or a directory."""
    path = os.path.abspath(path)
    if _inherited_fd(path) is not None:
        return False
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return True           # creating it says what is in the way
    if stat.S_ISLNK(mode):
        raise OSError(errno.ELOOP, "is a symbolic link: give the file it points to", path)
    if stat.S_ISDIR(mode):
        raise OSError(errno.EISDIR, "is a directory", path)
    return stat.S_ISREG(mode)


def open_output(path):
    """(fd, temporary name or None) to write a new output at path; commit()
    renames the temporary over path when it is complete."""
    path = os.path.abspath(path)
    if not replaces(path):
        fd = _inherited_fd(path)
        return (os.dup(fd) if fd is not None else os.open(path, os.O_WRONLY)), None
    tmp = f"{path}.tmp{os.getpid()}"
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp


def commit(tmp, path):
    """Make a complete output final (nothing to do when written in place)."""
    if tmp is not None:
        os.replace(tmp, os.path.abspath(path))


def discard(tmp):
    """Remove the temporary file of an output that did not complete."""
    if tmp is None:
        return
    try:
        os.unlink(tmp)
    except OSError:
        pass
