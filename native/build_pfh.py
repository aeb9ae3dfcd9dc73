"""cffi build script for pfhistory._pfh, the compiled native layer.

Run by setuptools through ``cffi_modules`` in setup.py; it reads the C API
from pfh.h so the declarations exist in exactly one place.
"""

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent


def _relative(path):
    """setuptools wants source paths relative to the project root."""
    return os.path.relpath(path, os.getcwd())


ffibuilder = FFI()
ffibuilder.cdef((HERE / "pfh.h").read_text())
ffibuilder.set_source(
    "pfhistory._pfh",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"pfh.h\"\n",
    sources=[_relative(HERE / name) for name in ("pfh.c", "pfh_print.c", "pfh_pack.c")],
    include_dirs=[_relative(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    depends=[_relative(HERE / name) for name in ("pfh.h", "pfsync_state.h", "pfh_bytes.h")],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
