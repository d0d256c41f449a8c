"""The compiled build: with SHIPPER_COMPILE=1, the modules of the per-entry hot path are compiled with mypyc
(a C extension each, beside the module). The pure-Python modules stay the fallback, and are what a build
without that variable installs. Everything else about the package is in pyproject.toml.

    SHIPPER_COMPILE=1 pip install --no-build-isolation .    (needs mypy and a C compiler)
"""

import ast
import os
import re
from pathlib import Path

from setuptools import setup

# The modules of shipper.HOT_PATH, compiled as one group: kept free of what mypyc refuses (a method replaced
# on an instance, a compiled class subclassed by an interpreted one).
_INIT = (Path(__file__).parent / "shipper" / "__init__.py").read_text()
HOT_PATH = [name.replace(".", "/") + ".py"
            for name in ast.literal_eval(re.search(r"^HOT_PATH = (\(.*?\))$", _INIT, re.M | re.S).group(1))]

ext_modules = []
if os.environ.get("SHIPPER_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(HOT_PATH, opt_level="3", group_name="shipper._hot_path")

setup(ext_modules=ext_modules)
