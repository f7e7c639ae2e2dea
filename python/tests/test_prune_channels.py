import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pare


class Block(nn.Module):
    """conv-bn-relu twice with a residual add, then two branches concatenated, then flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 12, 1)
        self.right = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv(y)) + y)
        y = torch.cat([F.relu(self.left(y)), F.relu(self.right(y))], 1)
        return self.fc(torch.flatten(F.max_pool2d(y, 2), 1))


def randomized(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@torch.no_grad()
def test_removing_dead_channels_is_exact_against_torch():
    model = randomized(Block())
    dead = torch.tensor([1, 6])  # residual group: stem+bn0 and conv+bn1 produce it
    for layer in (model.stem, model.bn0, model.conv, model.bn1):
        layer.weight[dead] = 0
        layer.bias[dead] = 0
    model.left.weight[torch.tensor([0, 3, 7])] = 0
    model.left.bias[torch.tensor([0, 3, 7])] = 0
    out, stats = pare.prune_channels(torch.jit.script(model), amount=0.25, exclude=["right.*"],
                                       input_shape=[1, 3, 8, 8])
    x = torch.randn(4, 3, 8, 8)
    assert (out(x) - model(x)).abs().max().item() <= 1e-5
    groups = {g.name: g for g in stats.groups}
    assert groups["stem"].members == ["stem", "conv"]
    assert (groups["stem"].channels_before, groups["stem"].channels_after) == (8, 6)
    assert groups["left"].channels_after == 9
    assert out.fc.weight.shape == (10, (9 + 4) * 4 * 4)  # cat: left 12 -> 9 then right's 4, 4x4 columns each
    assert groups["right"].blocked_by == "not selected (right.weight)"
    assert groups["fc"].blocked_by == "model output"


def test_count_macs_matches_forward_hooks_on_the_eager_model():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    scripted = torch.jit.script(model)
    macs = []

    def hook(module, inputs, output):
        macs.append(output.numel() * module.weight[0].numel())

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert pare.count_macs(scripted, [1, 3, 64, 64]) == sum(macs)


def test_resnet18_pipeline_export_reloads_in_torch(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.script(torchvision.models.resnet18(num_classes=10).eval())
    original = str(tmp_path / "resnet18.pt")
    scripted.save(original)
    path = str(tmp_path / "small.pt")
    out, report = pare.Pipeline([
        pare.PruneChannels(amount=0.5, scope="global", norm="l2", round_to=8, input_shape=[1, 3, 32, 32]),
        pare.ExportTorchScript(path),
    ]).run(scripted)
    entry = report["prune_channels"]
    # global ranking by RMS favours removing deep, low-resolution channels: fewer MACs saved than params
    assert entry.metrics["macs_after"] < 0.8 * entry.metrics["macs_before"]
    assert entry.metrics["params_after"] < 0.5 * entry.metrics["params_before"]
    prunable = [row for row in entry.layers if "blocked_by" not in row.labels]
    removed = sum(r.channels_before - r.channels_after for r in prunable) / sum(r.channels_before for r in prunable)
    assert 0.4 <= removed <= 0.5  # round_to 8 gives some channels back
    assert os.path.getsize(path) < 0.7 * os.path.getsize(original)
    for row in entry.layers:
        assert row.channels_after % 8 == 0 or "blocked_by" in row.labels
        # channel counts are not weight counts: no sparsity is claimed for removed channels
        assert row.parameters == row.nonzeros == 0 and row.sparsity == 0
    reloaded = torch.jit.load(path)
    y = reloaded(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert pare.count_macs(reloaded, [1, 3, 32, 32]) == entry.metrics["macs_after"]


def test_options_and_errors():
    scripted = torch.jit.script(randomized(Block()))
    with pytest.raises(ValueError, match="scope"):
        pare.PruneChannels(amount=0.5, scope="everywhere")
    with pytest.raises(ValueError, match="norm"):
        pare.PruneChannels(amount=0.5, norm="l3")
    with pytest.raises(ValueError, match="amount"):
        pare.PruneChannels(amount=-0.1)
    with pytest.raises(ValueError, match="candidates"):
        pare.prune_channels(scripted, amount=0.5, include=["nothing.*"], input_shape=[1, 3, 8, 8])
    with pytest.raises(pare.Error, match="input_shape"):
        pare.prune_channels(scripted, amount=0.5, input_shape=[1, 3, 10, 10])
    out, stats = pare.prune_channels(scripted, amount=0.5, exclude=["left.*"], input_shape=[1, 3, 8, 8])
    assert {g.name: g.channels_after for g in stats.groups}["left"] == 12

    class Reshaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).view(-1, 4 * 8 * 8))

    with pytest.raises(ValueError, match="aten::view"):
        pare.prune_channels(torch.jit.script(Reshaped()), amount=0.5, input_shape=[1, 3, 8, 8])


def test_cli_compress_channels(tmp_path):
    import shutil
    import subprocess

    cli = os.environ.get("PARE_CLI") or shutil.which("pare")
    if not cli:
        pytest.skip("set PARE_CLI to the installed pare binary (ctest does)")
    torch.manual_seed(0)
    original, small = tmp_path / "m.pt", tmp_path / "small.pt"
    torch.jit.script(randomized(Block())).save(str(original))
    run = subprocess.run([cli, "compress", str(original), "-o", str(small), "--channels", "0.5", "--scope", "local",
                          "--input", "1x3x8x8"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "macs_after" in run.stdout
    reloaded = torch.jit.load(str(small))
    assert reloaded(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert os.path.getsize(small) < os.path.getsize(original)
    bad = subprocess.run([cli, "compress", str(original), "-o", str(small), "--input", "1x3x8x8", "--int8"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--input needs --channels" in bad.stderr
    nhwc = subprocess.run([cli, "compress", str(original), "-o", str(small), "--channels", "0.5", "--input", "1x3x8x8",
                           "--channels-last"], capture_output=True, text=True, timeout=300)
    assert nhwc.returncode == 0, nhwc.stderr
    assert "channels_last" in nhwc.stdout and "channels_last_weights" in nhwc.stdout
    exported = torch.jit.load(str(small))
    weights = [list(n.inputs())[1].toIValue() for n in exported.graph.findAllNodes("aten::conv2d")]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    no_shape = subprocess.run([cli, "compress", str(original), "-o", str(small), "--channels", "0.5", "--channels-last"],
                              capture_output=True, text=True, timeout=300)
    assert no_shape.returncode != 0 and "--channels-last needs --input" in no_shape.stderr
