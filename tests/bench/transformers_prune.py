"""Attention heads and FFN neurons removed by pare.prune_channels: speed, export and agreement.

    PYTHONPATH=<build>/python python3 tests/bench/bench_transformers.py prune [--prune-ffn F]
        [--prune-heads H] [--prune-rounds R] [--prune-batch B]

Two models not sized for pare, random weights, seeded: the BERT-style encoder
of tests/support/text_models.py (hidden 256, 4 layers, 8 heads, FFN 1024,
forward(ids, mask), length 128, padded rows), scripted and traced, and
torchvision's VisionTransformer (64x64 images, patch 8, hidden 256, 4 layers,
8 heads, MLP 1024), scripted. Each is pruned with --prune-ffn of its FFN
neurons and --prune-heads of its attention heads removed (one example input of
batch 1), then:

- batch --prune-batch calls at 1 thread, the unpruned and the pruned model
  taken in turn (--prune-rounds rounds of 3 calls each, so load on the host
  reaches both alike): the median wall time and the median thread CPU time per
  call, and their ratios (throughput ratio = latency ratio at a fixed batch);
- the pruned model is saved and a subprocess that does not import pare loads
  it with stock torch.jit.load and compares it with a reference
  re-implementation of the pruned shapes: for the encoder
  tests/support/text_reference.py (the eager Encoder built with the pruned
  widths and head counts, the kept weights copied in; several batch sizes and
  lengths), for the ViT tests/support/vit_reference.py (torchvision's eager
  VisionTransformer with the pruned MLP widths, each attention computed from
  its kept heads' weights). Its largest difference is printed; over 1e-4 is a
  failure.

The ViT's nn.MultiheadAttention is written out by pare so that its heads can
go (docs/channels.md); torchvision zeroes the ViT's classifier, so it gets
random weights here: a zero output would agree with any reference.
"""

import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchvision

import pare

SUPPORT = pathlib.Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(SUPPORT))
import text_models  # noqa: E402

TEXT = dict(vocab=1000, hidden=256, layers=4, heads=8, ffn=1024, max_length=128)
VIT = dict(image_size=64, patch_size=8, num_layers=4, num_heads=8, hidden_dim=256, mlp_dim=1024, num_classes=10)

# Run in a subprocess without pare: stock torch.jit.load, then tests/support/vit_reference.py.
VIT_REFERENCE = """
import sys, torch
import vit_reference
config = eval(sys.argv[2])
pruned = torch.jit.load(sys.argv[1])
model = vit_reference.reference(pruned.state_dict(), config)
images = torch.randn(3, 3, config["image_size"], config["image_size"], generator=torch.Generator().manual_seed(5))
with torch.no_grad():
    worst = (pruned(images) - model(images)).abs().max().item()
assert "pare" not in sys.modules
print("heads", [block.self_attention.heads() for block in model.encoder.layers],
      "mlp", [block.mlp[0].out_features for block in model.encoder.layers])
print("max difference", worst)
sys.exit(0 if worst <= 1e-4 else 1)
"""


def add_arguments(parser):
    """The options of the prune section."""
    parser.add_argument("--prune-ffn", type=float, default=0.5, help="prune: fraction of FFN neurons removed")
    parser.add_argument("--prune-heads", type=float, default=0.25, help="prune: fraction of attention heads removed")
    parser.add_argument("--prune-rounds", type=int, default=15, help="prune: timing rounds (3 calls per model each)")
    parser.add_argument("--prune-batch", type=int, default=8, help="prune: rows per timed call")


def text_inputs(batch, length=128):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TEXT["vocab"], (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[batch // 2:, length * 3 // 4:] = 0  # padded rows
    return ids, mask


def timings(models, inputs, rounds):
    """Per model: (median wall seconds, median thread CPU seconds) per call, the models taken in turn."""
    wall, cpu = [[] for _ in models], [[] for _ in models]
    with torch.no_grad():
        for model in models:
            for _ in range(5):  # the profiling executor optimizes after its first runs
                model(*inputs)
        for _ in range(rounds):
            for i, model in enumerate(models):
                start_wall, start_cpu = time.perf_counter(), time.thread_time()
                for _ in range(3):
                    model(*inputs)
                wall[i].append((time.perf_counter() - start_wall) / 3)
                cpu[i].append((time.thread_time() - start_cpu) / 3)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def export_check(pruned, command):
    """Saves `pruned`, runs `command` + [path] in a subprocess without pare: (passed, its last line)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pruned.pt")
        pruned.save(path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # stock torch only
        env["PYTHONPATH"] = str(SUPPORT)
        done = subprocess.run(command(path), env=env, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


def text_command(path):
    sizes = [f"--{k.replace('_', '-')}={v}" for k, v in TEXT.items()]
    return [sys.executable, str(SUPPORT / "text_reference.py"), path] + sizes


def vit_command(path):
    return [sys.executable, "-c", VIT_REFERENCE, path, repr(VIT)]


def heads_of(stats):
    """Heads before -> after, summed over the attention groups pare follows by head."""
    groups = [g for g in stats.groups if g.head_size]
    if not groups:
        return "kept whole"
    before = sum(g.channels_before // g.head_size for g in groups)
    return f"{before} -> {sum(g.channels_after // g.head_size for g in groups)}"


def measure(label, model, example, inputs, command, args):
    pruned, stats = pare.prune_channels(model, args.prune_ffn, heads=args.prune_heads, example_inputs=example)
    passed, line = export_check(pruned, command)
    (wall0, cpu0), (wall1, cpu1) = timings([model, pruned], inputs, args.prune_rounds)
    ffn = [g for g in stats.groups if g.name.endswith(("intermediate", "mlp.0"))]
    print(f"| {label} | {stats.params_before / 1e6:.2f}M -> {stats.params_after / 1e6:.2f}M | "
          f"{sum(g.channels_before for g in ffn)} -> {sum(g.channels_after for g in ffn)} | "
          f"{heads_of(stats)} | {wall0 * 1e3:.1f} / {wall1 * 1e3:.1f} | {wall0 / wall1:.2f}x | "
          f"{cpu0 * 1e3:.1f} / {cpu1 * 1e3:.1f} | {cpu0 / cpu1:.2f}x | {'ok' if passed else 'FAILED'}: {line} |",
          flush=True)
    return passed


def run(args):
    """The prune section: prints one table row per model; exits 1 if an export check failed."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = text_models.Encoder(**TEXT).eval()
    vit = torchvision.models.VisionTransformer(**VIT).eval()
    torch.nn.init.normal_(vit.heads.head.weight)
    example = text_inputs(1)
    images = torch.randn(args.prune_batch, 3, VIT["image_size"], VIT["image_size"],
                         generator=torch.Generator().manual_seed(2))
    print(f"## Heads and FFN neurons removed: {args.prune_ffn:.0%} of FFN neurons, {args.prune_heads:.0%} of heads "
          f"(batch {args.prune_batch}, 1 thread, medians of {args.prune_rounds} interleaved rounds)")
    print("| model | parameters | FFN neurons | heads | ms per call, wall: before / after | speedup | "
          "ms per call, thread CPU: before / after | speedup | stock reload vs reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [("BERT-style encoder, scripted", torch.jit.script(encoder), example, text_command),
            ("BERT-style encoder, traced", torch.jit.trace(encoder, example), example, text_command),
            ("torchvision VisionTransformer, scripted", torch.jit.script(vit), (images[:1],), vit_command)]
    passed = True
    for label, model, example_inputs, command in rows:
        inputs = text_inputs(args.prune_batch) if label.startswith("BERT") else (images,)
        passed &= measure(label, model, example_inputs, inputs, command, args)
    if not passed:
        sys.exit(1)
