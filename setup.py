"""Only here because cffi_modules has no pyproject.toml key."""
from setuptools import setup

setup(cffi_modules=["native/build_pfh.py:ffibuilder"])
