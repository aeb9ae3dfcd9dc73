"""Python's cyclic garbage collector paused around bulk work.

The simulator and the collector keep millions of tuples and lists alive at
once, none of them in a cycle: the cyclic collector would walk them over and
over (about 1,650 times, 0.37 s, in a million-state collection) to find
nothing. Reference counting frees them as before.
"""

import gc
from contextlib import contextmanager

__all__ = ["cyclic_gc_paused"]


@contextmanager
def cyclic_gc_paused():
    """The cyclic GC off inside, back as it was after (also after an error)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
