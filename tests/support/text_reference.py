"""Checks a pruned BERT-style encoder against a reference re-implementation of its pruned shapes.

usage: text_reference.py PRUNED_PT --vocab V --hidden H --layers L --heads A --ffn F --max-length T

The pruned TorchScript file is loaded with stock torch.jit.load; the reference
is the eager Encoder of text_models.py built with the pruned model's widths and
head counts (read from its weights) and its weights copied in. Both run on
inputs of several batch sizes and lengths, with padded rows. Prints the head
counts, FFN widths and the largest difference; exits 1 if it is over 1e-4.
"""

import argparse
import sys

import torch
from torch import nn

import text_models


def reference(pruned, args):
    state = pruned.state_dict()
    model = text_models.Encoder(args.vocab, args.hidden, args.layers, args.heads, args.ffn, args.max_length)
    for i, layer in enumerate(model.layers):
        prefix = f"layers.{i}."
        for name in ("query", "key", "value", "output"):
            weight = state[prefix + f"attention.{name}.weight"]
            setattr(layer.attention, name, nn.Linear(weight.shape[1], weight.shape[0]))
        layer.attention.heads = state[prefix + "attention.query.weight"].shape[0] // layer.attention.head_dim
        ffn = state[prefix + "intermediate.weight"].shape[0]
        layer.intermediate, layer.out = nn.Linear(args.hidden, ffn), nn.Linear(ffn, args.hidden)
    model.load_state_dict(state)
    return model.eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pruned")
    for name in ("vocab", "hidden", "layers", "heads", "ffn", "max_length"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, required=True)
    args = parser.parse_args()
    pruned = torch.jit.load(args.pruned)
    ref = reference(pruned, args)
    print("heads", [layer.attention.heads for layer in ref.layers],
          "ffn", [layer.intermediate.out_features for layer in ref.layers])
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch, length in [(1, 16), (3, 9), (2, args.max_length)]:
            ids = torch.randint(0, args.vocab, (batch, length), generator=generator)
            mask = torch.ones(batch, length, dtype=torch.long)
            mask[0, length // 2:] = 0
            for got, want in zip(pruned(ids, mask), ref(ids, mask)):
                assert got.shape == want.shape, (got.shape, want.shape)
                worst = max(worst, (got - want).abs().max().item())
    print("max difference", worst)
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
