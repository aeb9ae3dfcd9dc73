"""Where state records come from: a pfctl -S state file, or the live /dev/pf.

Both yield decoded Columns in bounded chunks, so every consumer (PFState
objects, the collector, `pfhistory states`) reads any source the same way.
"""

import os
import stat

from pfhistory import _native, live, statefile

__all__ = ["is_live", "iter_columns", "iter_record_chunks", "check_records"]


def is_live(source):
    """True when source names the PF device rather than a state file."""
    if source is None:
        return True
    source = os.fspath(source)
    try:
        mode = os.stat(source).st_mode
    except OSError:
        return source == live.DEFAULT_DEVICE
    return stat.S_ISCHR(mode)


def iter_record_chunks(source, chunk_records=16384):
    """Yield (index of first record, bytes of whole records)."""
    if is_live(source):
        data = live.read_live_table(live.DEFAULT_DEVICE if source is None else os.fspath(source))
        step = chunk_records * _native.RECORD_SIZE
        view = memoryview(data)
        for start in range(0, len(data), step):
            yield start // _native.RECORD_SIZE, view[start:start + step]
        return
    yield from statefile.read_chunks(source, chunk_records=chunk_records)


def iter_columns(source, chunk_records=16384, check=True):
    """Yield decoded Columns chunk by chunk; with check, refuse foreign records."""
    origin = "/dev/pf" if source is None else os.fspath(source)
    for first, data in iter_record_chunks(source, chunk_records):
        columns = _native.decode(data)
        if check:
            statefile.check_columns(columns, origin, first)
        yield columns


def check_records(source, chunk_records=16384):
    """Read a state file through once, refusing what recording it would refuse
    (foreign records, two records of one state): a collector that must not
    write anything on bad input reads first."""
    # By id alone first (a third of the time of (creatorid, id) pairs at a
    # million states); only ids shared by two creators need the pairs.
    ids = set()
    shared = False
    for columns in iter_columns(source, chunk_records=chunk_records):
        before = len(ids)
        ids.update(columns["id"])
        shared = shared or len(ids) - before < columns.n
    del ids
    if shared:
        pairs = set()
        for columns in iter_columns(source, chunk_records=chunk_records):
            before = len(pairs)
            pairs.update(zip(columns["creatorid"], columns["id"]))
            if len(pairs) - before < columns.n:
                raise statefile.StateFileError(
                    f"{os.fspath(source)}: {statefile.TWO_RECORDS_OF_ONE_STATE}")
