"""A ViT compressed end to end on Fashion-MNIST: prune, distill, int8, export; then accuracy, speed and size.

    PYTHONPATH=<build>/python python3 tests/bench/bench_transformers.py pipeline [--out DIR] [--quick]
        [--train N] [--test N] [--teacher-epochs E] [--epochs E] [--ffn-prune F] [--heads H] [--rounds R]
    PYTHONPATH=<build>/python python3 tests/bench/bench_transformers.py pipeline --time-only DIR

The teacher is tests/support/vision_models.py's TinyViT (image rows as tokens,
6 pre-LayerNorm blocks), trained in plain PyTorch. The compressed model starts
from it: blocks 1, 3 and 5 kept (layer dropping, DistilBERT's initialisation)
and --ffn-prune of every block's FFN neurons (and --heads of its attention
heads) removed by pare.prune_channels.
From that one pruned start, pare.Distill runs twice for the same epochs on
the same batches: logits only, and logits + hidden states
(DistillMatch.layers("blocks", 6, "blocks", 3)). Each student is then made
int8, dynamic (QuantizeInt8Dynamic) and static (QuantizeInt8, calibrated on
training images), and every model is exported with pare.ExportTorchScript
(fp32 ones frozen) into --out.

The table is measured on the files: top-1 on the --test images, batch-8
latency on 1 thread (the median of --rounds interleaved rounds: every model
runs once per round, in turn, so load on the host reaches all alike), the
speedup over the fp32 teacher and the file size. --time-only DIR measures the
files in DIR again without training (the same table; top-1 is recomputed,
latency is what changes on a quieter machine).
"""

import os
import pathlib
import statistics
import sys
import time

import torch

import pare

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "support"))
from vision_models import TinyViT  # noqa: E402

TEACHER = dict(dim=128, depth=6, heads=4, ffn=512)
KEPT_BLOCKS = [1, 3, 5]
# (file name, row label), in the table's order; the first is the reference of every ratio
MODELS = [("teacher_fp32.pt", "fp32 teacher (6 blocks)"),
          ("pruned.pt", "pruned (3 blocks, FFN pruned)"),
          ("distilled_logits.pt", "pruned + distilled (logits)"),
          ("distilled_hidden.pt", "pruned + distilled (hidden)"),
          ("distilled_logits_int8_dynamic.pt", "  + int8 dynamic (logits)"),
          ("distilled_hidden_int8_dynamic.pt", "  + int8 dynamic (hidden)"),
          ("distilled_logits_int8_static.pt", "  + int8 static (logits)"),
          ("distilled_hidden_int8_static.pt", "  + int8 static (hidden)")]


def add_arguments(parser):
    """The options of the pipeline section (the shared ones: --train, --test, --teacher-epochs, --epochs,
    --threads)."""
    parser.add_argument("--out", default="vit_compressed", help="pipeline: folder for the exported models")
    parser.add_argument("--time-only", metavar="DIR", help="pipeline: only measure the models saved in DIR")
    parser.add_argument("--quick", action="store_true", help="pipeline: a smoke run (small data, 1 epoch)")
    parser.add_argument("--ffn-prune", type=float, default=0.75, help="pipeline: fraction of FFN neurons removed")
    parser.add_argument("--heads", type=float, default=0.0, help="pipeline: fraction of attention heads removed")
    parser.add_argument("--rounds", type=int, default=40,
                        help="pipeline: timing rounds; each model runs 2 calls per round, in turn")


def train_teacher(train, epochs):
    """TinyViT trained with AdamW, the learning rate decaying linearly to zero over the run."""
    torch.manual_seed(0)
    model = TinyViT(**TEACHER)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    from bench_transformers import train_classifier

    return torch.jit.script(train_classifier(model, train, epochs, optimizer, schedule))


def shallow_copy(teacher):
    """A 3-block TinyViT holding the teacher's blocks KEPT_BLOCKS, embedding, positions, norm and head."""
    from bench_transformers import student_from

    return student_from(teacher, KEPT_BLOCKS, TEACHER)


def export(module, path, freeze):
    pare.Pipeline([pare.ExportTorchScript(str(path), freeze=freeze)]).run(module)


def compress(args, data, out):
    """Trains the teacher and writes every model of MODELS into out; returns the seconds each step took."""
    train, calibration = data
    seconds = {}
    started = time.perf_counter()
    teacher = train_teacher(train, args.teacher_epochs)
    seconds["teacher training"] = time.perf_counter() - started
    export(teacher, out / "teacher_fp32.pt", freeze=True)
    pruned, stats = pare.prune_channels(shallow_copy(teacher), args.ffn_prune, heads=args.heads,
                                        example_inputs=torch.zeros(1, 1, 28, 28))
    print("pruned groups: " + ", ".join(f"{g.name} {g.channels_before}->{g.channels_after}"
                                        for g in stats.groups if g.channels_after < g.channels_before))
    export(pruned, out / "pruned.pt", freeze=True)
    matches = {"logits": None, "hidden": pare.DistillMatch.layers("blocks", TEACHER["depth"], "blocks",
                                                                  len(KEPT_BLOCKS))}
    for name, match in matches.items():
        started = time.perf_counter()
        student = pare.Pipeline([pare.Distill(teacher, train, epochs=args.epochs, lr=5e-4, seed=0,
                                              match=match)]).run(pruned).module
        seconds[f"distill ({name})"] = time.perf_counter() - started
        export(student, out / f"distilled_{name}.pt", freeze=True)
        passes = {"dynamic": pare.QuantizeInt8Dynamic(),
                  "static": pare.QuantizeInt8(calibration, never_slower=False)}
        for kind, quantize in passes.items():
            path = out / f"distilled_{name}_int8_{kind}.pt"
            pare.Pipeline([quantize, pare.ExportTorchScript(str(path))]).run(student)
    return seconds


def top1(model, images, labels):
    with torch.no_grad():
        right = sum((model(images[i:i + 500]).argmax(1) == labels[i:i + 500]).sum().item()
                    for i in range(0, len(labels), 500))
    return 100.0 * right / len(labels)


def batch_seconds(model, batch, calls=2):
    """Seconds per call, the mean of `calls` calls in a row."""
    started = time.perf_counter()
    for _ in range(calls):
        model(batch)
    return (time.perf_counter() - started) / calls


def measure(folder, test, rounds):
    """(label, top-1 %, median batch-8 seconds, file bytes) of each file of MODELS present in folder."""
    images, labels = test
    present = [(folder / name, label) for name, label in MODELS if (folder / name).exists()]
    models = [torch.jit.load(str(path)) for path, _ in present]
    accuracies = [top1(model, images, labels) for model in models]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batch = images[:8]
    with torch.no_grad():
        for model in models:
            for _ in range(5):
                model(batch)
        times = [[] for _ in models]
        for _ in range(rounds):
            for model, series in zip(models, times):
                series.append(batch_seconds(model, batch))
    torch.set_num_threads(threads)
    return [(label, accuracy, statistics.median(series), os.path.getsize(path))
            for (path, label), accuracy, series in zip(present, accuracies, times)]


def print_table(rows, test_count, rounds):
    print(f"## TinyViT on Fashion-MNIST, compressed: top-1 on {test_count} test images, batch 8 on 1 thread "
          f"(median of {rounds} interleaved rounds)")
    teacher_accuracy, teacher_seconds = rows[0][1], rows[0][2]
    print(f"{'model':<34} {'top-1 %':>8} {'vs fp32':>8} {'ms/batch':>9} {'speedup':>8} {'file KB':>8}")
    for label, accuracy, seconds, size in rows:
        print(f"{label:<34} {accuracy:>8.2f} {accuracy - teacher_accuracy:>+8.2f} {seconds * 1e3:>9.3f} "
              f"{teacher_seconds / seconds:>7.2f}x {size / 1024:>8.0f}")


def run(args):
    from bench_transformers import batches, load_split  # the distill section's data helpers

    if args.quick:
        args.train, args.test, args.teacher_epochs, args.epochs = 2048, 1000, 1, 1
        args.rounds = min(args.rounds, 10)
    test = load_split("t10k", args.test)
    if args.time_only:
        folder = pathlib.Path(args.time_only)
    else:
        folder = pathlib.Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        x, y = load_split("train", args.train)
        train = batches(x, y, 64)
        calibration = [(x[i:i + 64],) for i in range(0, min(len(x), 64 * 9), 64)]
        seconds = compress(args, (train, calibration), folder)
        print(f"training ({args.train} images, batch 64, teacher {args.teacher_epochs} epochs, students "
              f"{args.epochs} epochs, {torch.get_num_threads()} threads): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if not (folder / MODELS[0][0]).exists():
        raise SystemExit(f"no {MODELS[0][0]} in {folder}: run the pipeline section with --out {folder} first")
    print_table(measure(folder, test, args.rounds), args.test, args.rounds)
