"""The live state table: the one module that knows it runs on OpenBSD.

Opens /dev/pf read-only and asks the native layer for DIOCGETSTATES; on any
other system it refuses with one sentence instead of inventing data.
"""

import os
import sys

from pfhistory import _native
from pfhistory.exceptions import LiveTableError

__all__ = ["DEFAULT_DEVICE", "is_openbsd", "check_device", "read_live_table", "NOT_OPENBSD"]

DEFAULT_DEVICE = "/dev/pf"

NOT_OPENBSD = ("reading the live state table from /dev/pf needs OpenBSD; "
               "give a pfctl -S state file instead")


def is_openbsd():
    """True on OpenBSD, the only system with DIOCGETSTATES."""
    return sys.platform.startswith("openbsd")


def _open_device(dev):
    try:
        return os.open(dev, os.O_RDONLY)
    except PermissionError:
        raise LiveTableError(f"{dev}: permission denied (reading PF's state table needs root)") from None
    except OSError as e:
        raise LiveTableError(f"{dev}: cannot open: {e.strerror}") from None


def check_device(dev=DEFAULT_DEVICE):
    """Refuse a device that cannot be opened (not root, no pf) before a
    collector makes a database it would leave empty."""
    os.close(_open_device(dev))


def read_live_table(dev=DEFAULT_DEVICE):
    """Return the live table's records (bytes, 264 per state)."""
    if not is_openbsd():
        raise LiveTableError(NOT_OPENBSD)
    fd = _open_device(dev)
    try:
        status, err, data = _native.fetch_live(fd)
    finally:
        os.close(fd)
    if status == "unsupported":
        raise LiveTableError("this pfhistory was built without OpenBSD's /dev/pf support; "
                             "reinstall it on OpenBSD")
    if status != "ok":
        raise LiveTableError(f"{dev}: DIOCGETSTATES failed: {os.strerror(err)}")
    return data
