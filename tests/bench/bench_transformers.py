"""Transformers through pare's passes, measured side by side in one run.

    PYTHONPATH=<build>/python python3 tests/bench/bench_transformers.py distill [--train N] [--test N]
        [--teacher-epochs E] [--epochs E] [--threads T]

distill: a ViT-style classifier (tests/support/vision_models.py: image rows as
tokens, 6 pre-LayerNorm blocks, width 64) is trained on Fashion-MNIST in plain
PyTorch: the teacher. A 3-block student, initialised from the teacher's
blocks 1, 3 and 5 (DistilBERT's initialisation; embedding, norm and head
copied), is distilled with pare.Distill for the same epochs on the same
batches twice: logits only, and logits + hidden states (match=
DistillMatch.layers("blocks", 6, "blocks", 3): student block j against teacher
block 2j+1, MSE, weight 1). Prints top-1 of the teacher, the student before
distillation and both students on the test images (--test of the 10k), and
each student's hidden-state MSE to the teacher there (student block 2 against
teacher block 5).
"""

import argparse
import gzip
import os
import pathlib
import sys
import time

import torch

import pare

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "support"))
from vision_models import TinyViT  # noqa: E402
import transformers_int8  # noqa: E402  (the int8 section)
import transformers_pipeline  # noqa: E402  (the pipeline section)
import transformers_prune  # noqa: E402  (the prune section)

DATA = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def load_split(prefix, limit):
    with gzip.open(os.path.join(DATA, f"{prefix}-images-idx3-ubyte.gz")) as f:
        images = torch.frombuffer(bytearray(f.read()[16:16 + limit * 784]), dtype=torch.uint8)
    with gzip.open(os.path.join(DATA, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        labels = torch.frombuffer(bytearray(f.read()[8:8 + limit]), dtype=torch.uint8)
    return (images.view(-1, 1, 28, 28).float() / 255 - 0.2860) / 0.3530, labels.long()


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def top1(model, x, y):
    with torch.no_grad():
        return 100.0 * sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches(x, y, 500)) / len(y)


def train_classifier(model, train, epochs, optimizer, schedule=None):
    """Cross-entropy training on the (images, labels) batches, shuffled with a fixed seed; returns model.eval()."""
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(train), generator=generator).tolist():
            images, labels = train[i]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    return model.eval()


def train_teacher(train, epochs, args):
    torch.manual_seed(0)
    model = TinyViT(dim=64, depth=6, heads=4, ffn=128)
    return train_classifier(model, train, epochs, torch.optim.Adam(model.parameters(), lr=1e-3))


def student_from(teacher, blocks, shape=None):
    """A shallower TinyViT of the teacher's `shape` (dim, heads, ffn) holding its blocks `blocks`, embedding,
    positions, norm and head."""
    shape = dict(shape or dict(dim=64, heads=4, ffn=128), depth=len(blocks))
    student = TinyViT(**shape)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.")}
    for j, i in enumerate(blocks):
        state.update({f"blocks.{j}.{k}": v for k, v in teacher.blocks[i].state_dict().items()})
    student.load_state_dict(state)
    return torch.jit.script(student.eval())


def hidden_mse(student, teacher, x):
    s, = pare.submodule_outputs(student, x, ["blocks.2"])
    t, = pare.submodule_outputs(teacher, x, ["blocks.5"])
    return torch.nn.functional.mse_loss(s, t).item()


def distill_section(args):
    x, y = load_split("train", args.train)
    test_x, test_y = load_split("t10k", args.test)
    train = batches(x, y, 64)
    started = time.perf_counter()
    teacher = torch.jit.script(train_teacher(train, args.teacher_epochs, args))
    teacher_seconds = time.perf_counter() - started
    start = student_from(teacher, [1, 3, 5])
    rows = [("teacher (6 blocks)", top1(teacher, test_x, test_y), float("nan"), teacher_seconds),
            ("student (3 blocks), not distilled", top1(start, test_x, test_y), hidden_mse(start, teacher, test_x), 0.0)]
    runs = [("student, logits only", None),
            ("student, logits + hidden states", pare.DistillMatch.layers("blocks", 6, "blocks", 3))]
    for label, match in runs:
        started = time.perf_counter()
        result = pare.Pipeline([pare.Distill(teacher, train, epochs=args.epochs, lr=5e-4, seed=0,
                                             match=match)]).run(start)
        seconds = time.perf_counter() - started
        rows.append((label, top1(result.module, test_x, test_y), hidden_mse(result.module, teacher, test_x),
                     seconds))
    print(f"## Distillation: TinyViT on Fashion-MNIST ({args.train} training, {args.test} test images, batch 64, "
          f"teacher {args.teacher_epochs} epochs, students {args.epochs} epochs, {torch.get_num_threads()} threads)")
    print(f"{'model':<36} {'top-1 %':>8} {'vs teacher':>11} {'hidden MSE':>11} {'train s':>8}")
    for label, accuracy, mse, seconds in rows:
        print(f"{label:<36} {accuracy:>8.2f} {accuracy - rows[0][1]:>+11.2f} {mse:>11.4f} {seconds:>8.1f}")
    gain = rows[3][1] - rows[2][1]
    print(f"hidden states vs logits only: {gain:+.2f} points top-1, hidden MSE x{rows[3][2] / rows[2][2]:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["distill", "int8", "pipeline", "prune"])
    parser.add_argument("--train", type=int, default=20000, help="training images (of 60000)")
    parser.add_argument("--test", type=int, default=10000, help="test images (of 10000)")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="distillation epochs of each student")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    transformers_int8.add_arguments(parser)
    transformers_pipeline.add_arguments(parser)
    transformers_prune.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.section == "distill":
        distill_section(args)
    elif args.section == "int8":
        transformers_int8.run(args)
    elif args.section == "pipeline":
        transformers_pipeline.run(args)
    elif args.section == "prune":
        transformers_prune.run(args)


if __name__ == "__main__":
    main()
