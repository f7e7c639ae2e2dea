"""`pip install .` and `pip wheel .` as a Python user runs them, in fresh venvs.

    /usr/bin/python3 tests/pip_install_test.py SOURCE_DIR WORK_DIR

Run by ctest as install.pip. The venvs see Debian's python3-torch through
--system-site-packages; --no-index keeps pip off the network. They are made
--without-pip and run Debian's pip as `V/bin/python -m pip` (the same pip as
V/bin/pip, without copying it into each venv, which takes a minute). Each step's
time is printed; the build reuses ccache's objects when the checkout was built.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# What a user runs after installing: one pipeline, then the console script.
SMOKE = """
import pare, torch
assert "{venv}" in pare.__file__, pare.__file__
model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)))
out, report = pare.Pipeline([pare.L1Prune(amount=0.5, scope="global"), pare.QuantizeInt8Dynamic()]).run(model)
assert report["l1_prune"].total_sparsity == 0.5
assert out(torch.randn(2, 16)).shape == (2, 4)
assert "<svg" in report.to_html()
import pathlib  # the type stubs and the PEP 561 marker come along
assert all((pathlib.Path(pare.__file__).parent / f).exists() for f in ("__init__.pyi", "py.typed"))
print("pare", pare.__version__, "from", pare.__file__)
"""


def step(title, command, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv installed
    start = time.monotonic()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    print(f"pip_install_test: {title}: {seconds:.1f} s", flush=True)
    if result.returncode != 0:
        sys.exit(f"pip_install_test: {title} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def check_venv(venv, work):
    step(f"import and run a pipeline ({venv.name})", [venv / "bin" / "python", "-c", SMOKE.format(venv=venv)], cwd=work)
    help_text = step(f"pare --help ({venv.name})", [venv / "bin" / "pare", "--help"], cwd=work)
    assert "compress" in help_text and "inspect" in help_text, help_text


def main(source, work):
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    python = sys.executable  # Debian's python3 with python3-torch
    installed, from_wheel, wheels = work / "venv-install", work / "venv-wheel", work / "wheels"

    step("venv", [python, "-m", "venv", "--system-site-packages", "--without-pip", installed])
    step("pip install .", [installed / "bin" / "python", "-m", "pip", "install", "--no-build-isolation", "--no-index", source])
    check_venv(installed, work)

    step("pip wheel .", [installed / "bin" / "python", "-m", "pip", "wheel", "--no-build-isolation", "--no-index", "--no-deps",
                         "-w", wheels, source])
    wheel = sorted(wheels.glob("pare-*.whl"))
    assert len(wheel) == 1, list(wheels.iterdir())
    step("venv", [python, "-m", "venv", "--system-site-packages", "--without-pip", from_wheel])
    step("pip install the wheel", [from_wheel / "bin" / "python", "-m", "pip", "install", "--no-index", wheel[0]])
    check_venv(from_wheel, work)
    print(f"pip_install_test: ok ({wheel[0].name}, {wheel[0].stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: pip_install_test.py SOURCE_DIR WORK_DIR")
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
