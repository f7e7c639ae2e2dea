"""The reference for a pruned torchvision VisionTransformer: its eager model
built with the pruned MLP widths, each nn.MultiheadAttention replaced by
KeptHeadsAttention on the kept heads' weights, the pruned state copied in.
Stock torch and torchvision only: it checks files pare wrote without pare.

usage: vit_reference.py write OUT_PATH    a small ViT (32x32, 2 layers, 4 heads), scripted
       vit_reference.py check PRUNED_PT   exit 1 unless the file equals its reference within 1e-4;
                                          prints the kept heads per layer
"""

import sys

import torch
import torchvision
from torch import nn


class KeptHeadsAttention(nn.Module):
    """nn.MultiheadAttention (batch first, self-attention) reduced to the heads
    pare kept: their q/k/v rows and out_proj columns, attention written the
    textbook way. Reads the packed in_proj_weight of an attention pare left whole."""

    def __init__(self, state, prefix, head_dim):
        super().__init__()
        if prefix + "in_proj_weight" in state:
            q, k, v = state[prefix + "in_proj_weight"].chunk(3)
            qb, kb, vb = state[prefix + "in_proj_bias"].chunk(3)
        else:
            q, k, v = (state[prefix + f"{n}_weight"] for n in ("query", "key", "value"))
            qb, kb, vb = (state[prefix + f"{n}_bias"] for n in ("query", "key", "value"))
        self.projections = [(q, qb), (k, kb), (v, vb)]
        self.out = (state[prefix + "out_proj.weight"], state[prefix + "out_proj.bias"])
        self.head_dim = head_dim

    def heads(self):
        return self.projections[0][0].shape[0] // self.head_dim

    def forward(self, query, key, value, need_weights=False):
        b, t, _ = query.shape
        q, k, v = (nn.functional.linear(x, w, bias).view(b, t, -1, self.head_dim).transpose(1, 2)
                   for x, (w, bias) in zip((query, key, value), self.projections))
        attention = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim ** 0.5, dim=-1)
        merged = (attention @ v).transpose(1, 2).reshape(b, t, -1)
        return nn.functional.linear(merged, *self.out), None


def reference(state, config):
    """The eager ViT of `config` (VisionTransformer's arguments) with the widths and weights of `state`."""
    model = torchvision.models.VisionTransformer(**config).eval()
    head_dim = config["hidden_dim"] // config["num_heads"]
    for name, block in model.encoder.layers.named_children():
        prefix = f"encoder.layers.{name}."
        width = state[prefix + "mlp.0.weight"].shape[0]
        block.mlp[0], block.mlp[3] = nn.Linear(config["hidden_dim"], width), nn.Linear(width, config["hidden_dim"])
        block.self_attention = KeptHeadsAttention(state, prefix + "self_attention.", head_dim)
    model.load_state_dict({k: v for k, v in state.items() if ".self_attention." not in k})
    return model


SMALL = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)


def small_vit():
    """torchvision's ViT with a random classifier: torchvision zeroes it, and an
    all-zero output would agree with any reference."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(**SMALL).eval()
    nn.init.normal_(vit.heads.head.weight)
    return vit


def main(command, path):
    if command == "write":
        torch.jit.save(torch.jit.script(small_vit()), path)
        return 0
    pruned = torch.jit.load(path)
    model = reference(pruned.state_dict(), SMALL)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        worst = (pruned(images) - model(images)).abs().max().item()
        moved = (pruned(images) - small_vit()(images)).abs().max().item()
    print("heads", [block.self_attention.heads() for block in model.encoder.layers], "max difference", worst)
    return 0 if worst <= 1e-4 and moved > 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
