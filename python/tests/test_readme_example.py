"""The README's Python example runs as written and type-checks under
`mypy --strict` against the package's stubs (pare/__init__.pyi)."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import pare

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_example():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def mypy_command():
    """mypy run by the interpreter that has torch (Debian's python3-mypy), else a mypy on PATH."""
    probe = subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "mypy"]
    if shutil.which("mypy"):
        return [shutil.which("mypy")]
    return None


def test_readme_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    package_root = str(pathlib.Path(pare.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "l1_prune" in done.stdout and "quantize_int8" in done.stdout  # print(result.report)
    assert (tmp_path / "model_small.pt").exists()


def test_readme_example_passes_mypy_strict(tmp_path):
    command = mypy_command()
    if command is None:
        pytest.skip("mypy is not installed (Debian: apt install python3-mypy)")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    # mypy reads pare from its stubs beside the built extension; its cache
    # lives in the build tree so that reruns skip re-reading torch.
    package_root = pathlib.Path(pare.__file__).parents[1]
    cache = pathlib.Path(os.environ.get("PARE_BUILD_DIR", tmp_path)) / "mypy-cache"
    env = dict(os.environ, MYPYPATH=str(package_root))
    # torch's own package re-exports names (torch.jit.script) without the
    # explicit `X as X` form that --strict asks of it; that flag, and only
    # that one, is relaxed for torch's modules. pare and the example get --strict in full.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n\n[mypy-torch.*]\nimplicit_reexport = True\n")
    done = subprocess.run(command + ["--strict", "--config-file", str(config), "--cache-dir", str(cache),
                                     "--no-error-summary", str(script)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
