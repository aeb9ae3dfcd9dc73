"""The exceptions pfhistory raises: one hierarchy rooted at py-pf's PFError."""

__all__ = ["PFError", "StateFileError", "LiveTableError"]


class PFError(Exception):
    """Anything pfhistory cannot do; the message is one sentence for a person."""


class StateFileError(PFError):
    """A state file is missing, unreadable or not in OpenBSD's v6 format."""


class LiveTableError(PFError):
    """The live state table cannot be read (not OpenBSD, no permission, ...)."""
