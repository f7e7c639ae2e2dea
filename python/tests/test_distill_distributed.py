"""pare.Distill(distributed=...) across two Python processes: torchrun's
environment variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or a dict,
Gloo over 127.0.0.1; and `python -m pare distill --nproc 2`."""

import os
import socket
import subprocess
import sys

import pytest
import torch

import pare

RANK_SCRIPT = r"""
import os, sys, torch, pare
torch.manual_seed(0)
torch.set_num_threads(1)
teacher = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval())
student = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4)))
g = torch.Generator().manual_seed(1)
data = [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(12)]
if os.environ["ROUTE"] == "env":
    distributed = "env"
else:
    distributed = {"rank": int(os.environ["RANK"]), "world_size": 2, "master_addr": "127.0.0.1",
                   "master_port": int(os.environ["MASTER_PORT"]), "timeout": 30}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        del os.environ[name]
trained, report = pare.Pipeline([pare.Distill(teacher, data, epochs=2, lr=0.01, distributed=distributed)]).run(student)
assert report["distill"].metrics["world_size"] == 2
torch.save([p.detach() for p in trained.parameters()], sys.argv[1])
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, route):
    port = free_port()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   ROUTE=route)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"params{rank}.pt")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    if any("needs Gloo" in out for out in outputs):
        pytest.skip("this build of pare has no Gloo (a LibTorch without its headers)")
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return [torch.load(tmp_path / f"params{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize("route", ["env", "dict"])
def test_two_ranks_end_with_identical_parameters(tmp_path, route):
    ranks = run_ranks(tmp_path, route)
    assert len(ranks[0]) == 2
    for a, b in zip(*ranks):
        assert torch.equal(a, b)


def test_bad_distributed_arguments_are_value_errors():
    teacher = torch.jit.script(torch.nn.Linear(8, 4).eval())
    data = [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="env"):
        pare.Distill(teacher, data, distributed="torchrun")
    with pytest.raises(ValueError, match="unknown key"):
        pare.Distill(teacher, data, distributed={"rank": 0, "world_size": 2, "port": 1})
    with pytest.raises(ValueError, match="rank"):
        pare.Distill(teacher, data, distributed={"rank": 2, "world_size": 2})


def test_cli_nproc_2_writes_one_model_and_report(tmp_path):
    torch.manual_seed(0)
    teacher = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval())
    student = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4)))
    with torch.no_grad():
        student[0].weight[0, :4] = 0  # zeros stay zeros
    teacher.save(str(tmp_path / "teacher.pt"))
    student.save(str(tmp_path / "student.pt"))
    x, y = torch.randn(256, 8), torch.randint(0, 4, (256,))
    torch.save((x, y), tmp_path / "train.pt")
    out, report = tmp_path / "out.pt", tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pare", "distill", str(tmp_path / "teacher.pt"),
                           str(tmp_path / "student.pt"), "-o", str(out), "--data", str(tmp_path / "train.pt"),
                           "--batch", "16", "--epochs", "2", "--nproc", "2", "--timeout", "30", "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    if "needs Gloo" in done.stderr:
        pytest.skip("this build of pare has no Gloo (a LibTorch without its headers)")
    assert done.returncode == 0, done.stdout + done.stderr
    trained = torch.jit.load(str(out))
    weight = dict(trained.named_parameters())["0.weight"]
    assert torch.count_nonzero(weight[0, :4]) == 0
    assert not torch.equal(weight, student[0].weight)
    assert '"world_size"' in report.read_text()
