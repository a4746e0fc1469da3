"""setuptools entry point: names the CFFI build script and forces full rebuilds.

Everything else lives in pyproject.toml.  `pip install ./bindings/python`
compiles the C library and the bindings into one extension, tasker._native;
see build_ffi.py for how the sources are found.
"""
from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Always rebuilds the extension.

    pip (>= 21.3) builds in place and keeps ./build between installs, and
    setuptools decides whether to rebuild from the .c files' times only: a
    change to one of the library's private headers would otherwise link
    stale objects.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self.force = True


setup(cffi_modules=["build_ffi.py:ffibuilder"], cmdclass={"build_ext": BuildExt})
