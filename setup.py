"""Builds eventbus/_scan.c, the C version of the tap's hot loop (eventbus/scan.py), in place:
`python setup.py build_ext --inplace`. `make` runs it; without a C compiler the tap uses the
pure-Python version of the same loop."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("eventbus._scan", ["eventbus/_scan.c"], extra_compile_args=["-O2", "-Wall"])
    ],
    py_modules=[],
)
