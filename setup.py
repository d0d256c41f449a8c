"""The compiled build: with SHIPPER_COMPILE=1, the modules of the per-entry hot path are compiled with mypyc
(a C extension each, beside the module). The pure-Python modules stay the fallback, and are what a build
without that variable installs. Everything else about the package is in pyproject.toml.

    SHIPPER_COMPILE=1 pip install --no-build-isolation .    (needs mypy and a C compiler)
"""

import os

from setuptools import setup

# Modules that take part in every json-file entry, compiled; kept free of what mypyc refuses (a method
# replaced on an instance, a compiled class subclassed by an interpreted one).
HOT_PATH = ["shipper/transforms/assemble.py"]

ext_modules = []
if os.environ.get("SHIPPER_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(HOT_PATH, opt_level="3")

setup(ext_modules=ext_modules)
