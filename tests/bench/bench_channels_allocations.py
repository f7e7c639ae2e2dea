"""Which widths run fastest at 2x and 4x fewer MACs: the small ResNet at hand-picked widths.

bench_channels prunes the small ResNet by L1 ranking; this script skips the
ranking and builds the architecture directly at hand-picked widths (each
stage's residual width and its blocks' inner widths), so the question is only
what the convolution kernels make of each shape. Each allocation's MACs and
frozen TorchScript latency (batch 64, 1 thread, median, NCHW and NHWC) are
printed as ratios against the unpruned widths, in one run.

usage: PYTHONPATH=build/python bench_channels_allocations.py [--repeats 30] [--rounds 3]

Every module is timed once per round, the rounds interleaved, and the median
of its rounds' medians is printed: a slow spell of the machine then spreads
over all allocations instead of landing on one.
"""

import argparse
import ctypes
import time

import torch
from torch import nn

import pare
from bench_channels_models import SmallResNet

# (residual width per stage, (inner widths of the stage's two blocks) per stage)
ALLOCATIONS = {
    "unpruned": ((16, 32, 64), ((16, 16), (32, 32), (64, 64))),
    "2x: as L1 ranking gives (round_to 8)": ((8, 24, 40), ((8, 8), (24, 24), (40, 40))),
    "2x: inner widths halved": ((16, 32, 64), ((8, 8), (16, 16), (32, 32))),
    "2x: stages 8/32/32": ((8, 32, 32), ((8, 8), (32, 32), (32, 32))),
    "2x: stages 8/16/64": ((8, 16, 64), ((8, 8), (16, 16), (64, 64))),
    "2x: stages 16/16/32": ((16, 16, 32), ((16, 16), (16, 16), (32, 32))),
    "4x: as L1 ranking gives (round_to 8)": ((8, 16, 24), ((8, 8), (16, 16), (24, 24))),
    "4x: multiples of 16 after stage 1": ((8, 16, 32), ((8, 8), (16, 16), (32, 32))),
    "4x: stage 3 inner 16": ((8, 16, 32), ((8, 8), (16, 16), (16, 16))),
    "4x: stage 2 inner 8": ((8, 16, 32), ((8, 8), (8, 8), (32, 32))),
    "4x: stage 3 48 wide": ((8, 16, 48), ((8, 8), (16, 16), (16, 16))),
    "4x: stage 1 residual 16, inner 8": ((16, 16, 32), ((8, 8), (8, 8), (16, 16))),
    "4x: stage 1 residual 8, inner 16": ((8, 16, 32), ((16, 16), (16, 16), (16, 16))),
}


def keep_freed_memory():
    """glibc returns large freed blocks to the system and faults them in again on
    the next call (milliseconds per batch-64 call); a fixed high threshold keeps
    them, so the figures are the kernels' and not the page faults'."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 1 << 30)


def median_ms(module, x, repeats):
    with torch.no_grad():
        for _ in range(5):
            module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def frozen(model, channels_last):
    """The frozen module and a batch-64 input, in NCHW or NHWC memory order."""
    x = torch.randn(64, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return torch.jit.freeze(torch.jit.script(model)), x


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows, runs = [], []
    for name, (widths, mids) in ALLOCATIONS.items():
        model = SmallResNet(widths, mids).eval()
        for m in model.modules():  # settled statistics, as after training
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
        rows.append([name, widths, mids, pare.count_macs(torch.jit.script(model), [1, 1, 28, 28])])
        runs += [frozen(model, False), frozen(model, True)]
    times = [[] for _ in runs]
    for _ in range(args.rounds):
        for i, (module, x) in enumerate(runs):
            times[i].append(median_ms(module, x, args.repeats))
    for i, row in enumerate(rows):
        row += [sorted(t)[len(t) // 2] for t in times[2 * i:2 * i + 2]]
    base = rows[0]
    print(f"torch {torch.__version__}, batch 64, 1 thread, frozen TorchScript, median of {args.rounds} rounds' medians of {args.repeats} calls")
    print(f"{'allocation':38} {'widths':12} {'inner':30} {'MACs':>8} {'NCHW ms':>8} {'gain':>6} {'NHWC ms':>8} {'gain':>6}")
    for name, widths, mids, macs, nchw, nhwc in rows:
        print(f"{name:38} {str(widths):12} {str(mids):30} {base[3] / macs:7.2f}x {nchw:8.2f} {base[4] / nchw:5.2f}x "
              f"{nhwc:8.2f} {base[5] / nhwc:5.2f}x")


if __name__ == "__main__":
    main()
