"""The "int8" section of bench_transformers.py: static against dynamic int8 on transformers.

    PYTHONPATH=<build>/python python3 tests/bench/bench_transformers.py int8 [--int8-batch 8] [--int8-threads 1]
        [--int8-repeats 15] [--int8-calibration 4]

Two models we did not tune for int8: the BERT-style encoder of
tests/support/text_models.py (hidden 384, 4 layers, 6 heads, feed-forward 1536,
128 tokens; forward(ids, mask)) and torchvision's VisionTransformer (224x224
images, patch 16, 4 layers, 6 heads, hidden 384, MLP 1536, its zeroed head
given random weights), both with random seeded weights; the encoder scripted,
the ViT traced. Each runs in fp32, through pare.QuantizeInt8Dynamic,
through pare.QuantizeInt8 with the per-layer choice off (every island static
int8 or float: the pass as it was) and on (each Linear island static, dynamic
or float, whichever timed fastest). Calibration: random token ids (all tokens
attended) for the encoder; Fashion-MNIST test images, resized to 224x224 and
repeated on 3 channels, for the ViT; the last calibration batch is held out
and measures SQNR. Times are medians of --int8-repeats forward calls at
--int8-batch rows on --int8-threads threads, each model taking turns with the others;
SQNR (dB) of the first output against fp32 on a batch none was calibrated on.
Then each op of one static int8 Linear island (quantize, quantized::linear,
dequantize) and quantized::linear_dynamic alone, on the encoder's activations:
what decides between static and dynamic where a float op sits on each side.
"""

import gzip
import os
import pathlib
import statistics
import sys
import time

import torch

import pare

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "support"))
from text_models import Encoder  # noqa: E402

DATA = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def add_arguments(parser):
    parser.add_argument("--int8-batch", type=int, default=8, help="int8: rows per timed call")
    parser.add_argument("--int8-threads", type=int, default=1, help="int8: intra-op threads while timing")
    parser.add_argument("--int8-repeats", type=int, default=15, help="int8: timed calls per model (median)")
    parser.add_argument("--int8-calibration", type=int, default=4, help="int8: calibration batches (last held out)")


def encoder_case(args):
    torch.manual_seed(0)
    model = torch.jit.script(Encoder(1000, 384, 4, 6, 1536, 128).eval())
    generator = torch.Generator().manual_seed(1)

    def batch():
        rows = args.int8_batch
        return torch.randint(0, 1000, (rows, 128), generator=generator), torch.ones(rows, 128)
    return "BERT-style encoder (384 x 4, 128 tokens)", model, [batch() for _ in range(args.int8_calibration)], batch()


def fashion_images(count, offset):
    with gzip.open(os.path.join(DATA, "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()[16 + offset * 784:16 + (offset + count) * 784]
    images = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 1, 28, 28).float() / 255 - 0.2860) / 0.3530
    return torch.nn.functional.interpolate(images, size=224, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)


def vit_case(args):
    import torchvision
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=4, num_heads=6,
                                               hidden_dim=384, mlp_dim=1536, num_classes=10)
    # torchvision zeroes the head, so every output would be its bias: SQNR needs a head that reads the features.
    torch.nn.init.normal_(vit.heads.head.weight, std=384 ** -0.5)
    calibration = [(fashion_images(args.int8_batch, i * args.int8_batch),) for i in range(args.int8_calibration)]
    # Traced with autograd on: MultiheadAttention then takes its plain path, whose input and output
    # projections are linears; its inference fast path is one fused op, with no Linear left to quantize.
    model = torch.jit.trace(vit.eval(), calibration[0], check_trace=False)
    test = (fashion_images(args.int8_batch, 5000),)
    return "torchvision ViT (384 x 4, 224 px, patch 16)", model, calibration, test


def first_output(outputs):
    return outputs[0] if isinstance(outputs, tuple) else outputs


def sqnr_db(reference, approx):
    noise = (reference - approx).pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * torch.log10(reference.pow(2).sum() / noise).item()


def time_side_by_side(models, inputs, repeats):
    """Median milliseconds per model, the models taking turns so that load on the host hits them alike."""
    times = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            for _ in range(3):
                model(*inputs)
        for _ in range(repeats):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(*inputs)
                times[i].append(1e3 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def quantized(model, calibration, variant):
    passes = {"dynamic": pare.QuantizeInt8Dynamic(),
              "static": pare.QuantizeInt8(calibration, try_dynamic=False),
              "static+choice": pare.QuantizeInt8(calibration)}
    module, report = pare.Pipeline([passes[variant]]).run(model)
    return module, report


def forms(report):
    """How many Linears each form got, from the static pass's report."""
    entry = report["quantize_int8"]
    counts = {}
    for layer in entry.layers:
        if layer.labels.get("kind") == "Linear":
            form = layer.labels.get("form", layer.labels.get("status"))
            counts[form] = counts.get(form, 0) + 1
    return ", ".join(f"{n} {form}" for form, n in sorted(counts.items()))


def run_case(name, model, calibration, test, args):
    variants = [("fp32", model, None)]
    for label in ["dynamic", "static", "static+choice"]:
        torch.set_num_threads(args.int8_threads)  # the passes time islands at the threads used later
        module, report = quantized(model, calibration, label)
        variants.append((label, module, report))
    torch.set_num_threads(args.int8_threads)
    times = time_side_by_side([m for _, m, _ in variants], test, args.int8_repeats)
    with torch.no_grad():
        reference = first_output(model(*test))
        sqnrs = [sqnr_db(reference, first_output(m(*test))) for _, m, _ in variants]
    print(f"### {name}: batch {args.int8_batch}, {args.int8_threads} thread(s), medians of {args.int8_repeats}")
    print(f"{'variant':<15} {'ms':>8} {'fp32/x':>7} {'dynamic/x':>10} {'SQNR dB':>8}  Linear forms")
    for (label, _, report), ms, sqnr in zip(variants, times, sqnrs):
        where = forms(report) if report is not None and "quantize_int8" in report else ""
        print(f"{label:<15} {ms:>8.1f} {times[0] / ms:>7.2f} {times[1] / ms:>10.2f} {sqnr:>8.1f}  {where}")


def kernel_times(args):
    """What one static int8 Linear island costs beside dynamic: each op alone on the encoder's activations."""
    torch.backends.quantized.engine = pare.available_quantized_engines()[0]
    torch.manual_seed(0)
    x, w, bias = torch.randn(args.int8_batch, 128, 384), torch.randn(384, 384) / 20, torch.zeros(384)
    qw = torch.quantize_per_channel(w, w.abs().amax(1) / 127.5, torch.zeros(384, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, bias)
    qx = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
    qy = torch.ops.quantized.linear(qx, packed, 0.05, 128)
    ops = [("fp32 linear", lambda: torch.nn.functional.linear(x, w, bias)),
           ("quantize_per_tensor", lambda: torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)),
           ("quantized::linear", lambda: torch.ops.quantized.linear(qx, packed, 0.05, 128)),
           ("dequantize", lambda: qy.dequantize()),
           ("quantized::linear_dynamic", lambda: torch.ops.quantized.linear_dynamic(x, packed, False))]
    times = time_side_by_side([op for _, op in ops], (), 4 * args.int8_repeats)
    print(f"### One 384x384 Linear on ({args.int8_batch}, 128, 384), {args.int8_threads} thread(s): ms per op")
    for (label, _), ms in zip(ops, times):
        print(f"{label:<28} {ms:>7.3f}")


def run(args):
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    print(f"## Static against dynamic int8 on transformers (engine {pare.available_quantized_engines()[0]})")
    for case in (encoder_case, vit_case):
        run_case(*case(args), args)
    kernel_times(args)
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = engine
