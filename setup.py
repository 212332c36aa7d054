"""The package's native build: the onnxruntime custom-op library of export/native.

Everything else is in pyproject.toml. The library needs the headers that
``scripts/fetch_native_deps.py`` puts under ``build/native/include`` (``make setup`` runs
it first). It is optional: without a compiler or the headers the package installs without
it, and exporting with ``--lowering native`` says so and names a stock lowering instead.
"""

import os
import shlex

from setuptools import Extension, setup

HEADERS = os.path.join("build", "native", "include")
# The library is compiled on the machine that runs it; CFCONV_NATIVE_FLAGS overrides the
# target (e.g. "-O3 -march=x86-64-v3" for a library built for other machines).
FLAGS = shlex.split(os.environ.get("CFCONV_NATIVE_FLAGS", "-O3 -march=native"))

setup(
    ext_modules=[
        Extension(
            "export.native._spectral_onnxruntime",
            sources=["export/native/spectral_conv.cpp", "export/native/onnxruntime_op.cpp"],
            include_dirs=[HEADERS, "export/native"],
            depends=["export/native/spectral_conv.hpp"],
            language="c++",
            extra_compile_args=["-std=c++17", "-fvisibility=hidden", *FLAGS],
            optional=True,
        )
    ]
)
