"""Builds the pare Python package: CMake compiles the `pare._pare` extension
(the C++ library linked in statically) against the interpreter running pip;
the pure-Python modules come from python/pare. Metadata lives in pyproject.toml.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE_DIR = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures the project with only the Python extension on and builds `_pare`."""

    def build_extension(self, ext):
        # One level below the checkout, like a developer's build/: same paths
        # relative to the checkout, so ccache serves the objects an identically
        # configured build/ compiled (the top-level CMakeLists sets its base_dir).
        build_dir = Path(os.environ.get("PARE_PIP_BUILD_DIR") or SOURCE_DIR / "build-pip").resolve()
        configure = [
            "cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DPARE_PYTHON={sys.executable}",
            "-DPARE_BUILD_PYTHON=ON", "-DPARE_BUILD_TESTS=OFF",
            "-DPARE_BUILD_EXAMPLES=OFF", "-DPARE_BUILD_BENCHMARKS=OFF",
        ]
        # CMAKE_ARGS: more configure arguments, space-separated, as scikit-build reads them.
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_pare", "-j", jobs], check=True)
        built = sorted((build_dir / "python" / "pare").glob("_pare*.so"))
        if not built:
            raise RuntimeError(f"CMake built no _pare extension under {build_dir / 'python' / 'pare'}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target)


setup(ext_modules=[CMakeExtension("pare._pare")], cmdclass={"build_ext": CMakeBuild})
