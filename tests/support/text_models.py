"""Writes a BERT-style text encoder as a TorchScript file.

usage: text_models.py OUT_PATH [--vocab V] [--hidden H] [--layers L] [--heads A] [--ffn F] [--max-length T]

Written as Hugging Face writes BERT: token + position embeddings, LayerNorm,
q/k/v Linear layers, an additive attention mask from the (batch, length)
0/1 mask input, GELU feed-forward, post-LayerNorm residuals. forward(ids, mask)
returns (hidden states (batch, length, hidden), logits of the first token
(batch, 3)). Random weights, seeded; scripted so that any length up to
max-length runs.
"""

import argparse
import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        context = torch.softmax(scores, dim=-1) @ v
        b, _, t, _ = context.shape
        return self.output(context.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden)
        self.intermediate = nn.Linear(hidden, ffn)
        self.out = nn.Linear(ffn, hidden)
        self.output_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, additive_mask))
        return self.output_norm(x + self.out(nn.functional.gelu(self.intermediate(x))))


class Encoder(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, ffn: int, max_length: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_length, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList([Layer(hidden, heads, ffn) for _ in range(layers)])
        self.classify = nn.Linear(hidden, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        positions = torch.arange(ids.size(1), device=ids.device).unsqueeze(0)
        x = self.norm(self.tokens(ids) + self.positions(positions))
        additive_mask = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, additive_mask)
        return x, self.classify(x[:, 0])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Encoder(args.vocab, args.hidden, args.layers, args.heads, args.ffn, args.max_length).eval()
    torch.jit.save(torch.jit.script(model), args.out)


if __name__ == "__main__":
    main()
