"""Times and durations as people type them: ISO 8601 and "90m", "2h", "3d".

Naive times are local time; everything returned is timezone-aware UTC.
"""

import re
from datetime import datetime, timedelta, timezone

from pfhistory.exceptions import PFError

__all__ = ["TimeSpecError", "parse_duration", "parse_time", "format_time", "format_epoch",
           "format_duration"]


class TimeSpecError(PFError, ValueError):
    """A time or duration that cannot be read (one sentence naming what was given)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


# Longer than any history or retention anyone means; beyond it a typo's 20
# digits would overflow the database's 64-bit integers.
_MAX_DURATION_S = 100 * 366 * 86400
# Times are stored as epoch seconds; before 1970 nothing of PF's happened.
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)


def parse_duration(text, what="duration"):
    """Seconds (float) for "45", "45s", "90m", "2h", "3d" or "1w"."""
    m = _DURATION.match(str(text))
    if not m:
        raise TimeSpecError(f"{what} {text!r} is not a duration like 90s, 90m, 2h or 3d")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds > _MAX_DURATION_S:
        raise TimeSpecError(f"{what} {text!r} is too long: at most 100 years")
    return seconds


def parse_time(text, now=None, what="time"):
    """An aware UTC datetime for an ISO 8601 time (local unless it has an
    offset) or a duration back from now ("2h" = two hours ago)."""
    text = str(text).strip()
    if _DURATION.match(text) and not text.isdigit():
        now = now or datetime.now(timezone.utc)
        t = now - timedelta(seconds=parse_duration(text, what))
    else:
        candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            t = datetime.fromisoformat(candidate)
        except ValueError:
            raise TimeSpecError(
                f"{what} {text!r} is not an ISO 8601 time (2026-11-24T22:00, "
                f"2026-11-24 22:00+01:00) nor a duration back from now (90m, 2h, 3d)") from None
        try:
            if t.tzinfo is None:
                t = t.astimezone()  # naive: local time
            t = t.astimezone(timezone.utc)
        except (ValueError, OverflowError, OSError):
            t = None                # at the ends of the calendar
    if t is None or not _EARLIEST <= t <= _LATEST:
        raise TimeSpecError(f"{what} {text!r} is out of range: between 1970 and 9999")
    return t


def format_time(t):
    """A UTC datetime in local time with its offset, to the second."""
    if t is None:
        return "-"
    return t.astimezone().isoformat(timespec="seconds")


def format_epoch(epoch):
    """Epoch seconds (UTC) in local time with its offset, to the second."""
    if epoch is None:
        return "-"
    return format_time(datetime.fromtimestamp(epoch, timezone.utc))


def format_duration(seconds):
    """Seconds as 45s, 3m05s, 2h07m or 1d03h20m."""
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"
