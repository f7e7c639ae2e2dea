"""A small ViT-style classifier for Fashion-MNIST, as a Python user would write it.

Each image is a sequence of tokens: its 28 rows (28 pixels each) or 7x7 patches
of 4x4 pixels, embedded by a Linear layer, with a class token and learned
positions. Pre-LayerNorm blocks: q/k/v Linear layers, an nn.Softmax submodule
over the attention scores (so the attention map is a submodule output that
distillation can match), a GELU feed-forward. forward(images) -> logits.
Importable (tests, benchmarks) and runnable: writes a scripted, untrained model.

usage: vision_models.py OUT_PATH [--dim D] [--depth L] [--heads H] [--ffn F] [--seed S]
"""

import argparse
import math

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attend = nn.Softmax(dim=-1)
        self.output = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        weights = self.attend(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim))
        context = weights @ v
        b, _, t, _ = context.shape
        return self.output(context.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, ffn)
        self.out = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.out(nn.functional.gelu(self.intermediate(self.mlp_norm(x))))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, ffn: int = 128, patch: int = 0,
                 classes: int = 10):
        super().__init__()
        self.patch = patch  # 0: the image's rows are the tokens
        tokens, width = (28, 28) if patch == 0 else ((28 // patch) ** 2, patch * patch)
        self.embed = nn.Linear(width, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, ffn) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        b = images.size(0)
        if self.patch == 0:
            return images.reshape(b, 28, 28)
        p = self.patch
        x = images.reshape(b, 28 // p, p, 28 // p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(b, (28 // p) * (28 // p), p * p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.tokens(images))
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=128)
    parser.add_argument("--patch", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = TinyViT(args.dim, args.depth, args.heads, args.ffn, args.patch).eval()
    torch.jit.script(model).save(args.out)


if __name__ == "__main__":
    main()
