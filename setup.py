"""Builds eventbus/_scan.c, the C version of the tap's hot loop (eventbus/scan.py), in place:
`python setup.py build_ext --inplace`. `make` runs it; where it cannot be built the tap uses the
pure-Python version of the same loop. The binary carries the SHA-256 of the source it was built
from, so a binary left from older source is never used (eventbus/scan.py checks)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "eventbus/_scan.c"
SHA = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "eventbus._scan",
            [SOURCE],
            define_macros=[("SOURCE_SHA256", f'"{SHA}"')],
            extra_compile_args=["-O2", "-Wall"],
        )
    ],
    py_modules=[],
)
