"""prune_channels on transformers: models with several inputs, attention heads and FFN neurons removed.

The reference for every pruned encoder is tests/support/text_reference.py: the eager BERT-style encoder
of text_models.py built with the pruned widths and head counts, the kept weights copied in."""

import argparse
import io
import pathlib
import sys

import pytest
import torch
import torchvision
from torch import nn

import pare

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "support"))
import text_models  # noqa: E402
import text_reference  # noqa: E402
import vit_reference  # noqa: E402

SIZES = dict(vocab=100, hidden=64, layers=2, heads=4, ffn=128, max_length=32)


def text_inputs(batch, length):
    generator = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(0, SIZES["vocab"], (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # one padded row: the mask must still broadcast along the heads
    return ids, mask


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return text_models.Encoder(**SIZES).eval()


def reference(pruned):
    return text_reference.reference(pruned, argparse.Namespace(**SIZES))


def heads_per_layer(pruned):
    return [pruned.state_dict()[f"layers.{i}.attention.query.weight"].shape[0] // 16 for i in range(SIZES["layers"])]


def heads_attribute(module):
    return [getattr(module.layers, str(i)).attention.heads for i in range(SIZES["layers"])]


def assert_matches(actual, expected):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert (a - e).abs().max().item() <= 1e-4


def reloaded(module):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("convert", ["script", "trace"])
def test_heads_and_ffn_removed_match_a_reference_with_the_pruned_shapes(encoder, convert):
    example = text_inputs(1, 16)
    model = torch.jit.script(encoder) if convert == "script" else torch.jit.trace(encoder, example)
    pruned, stats = pare.prune_channels(model, 0.5, heads=0.5, example_inputs=example)
    attention = [g for g in stats.groups if g.head_size]
    assert [(g.channels_before, g.channels_after, g.head_size) for g in attention] == [(64, 32, 16)] * 2
    assert all(len(g.members) == 3 for g in attention)  # query, key, value
    ffn = [g for g in stats.groups if g.name.endswith("intermediate")]
    assert [(g.channels_before, g.channels_after) for g in ffn] == [(128, 64)] * 2
    assert heads_per_layer(pruned) == [2, 2]
    if convert == "script":  # the attribute the head count came from follows it
        assert heads_attribute(pruned) == [2, 2]
        assert heads_attribute(model) == [4, 4]  # the input is untouched
    ref = reference(pruned)
    with torch.no_grad():
        for batch, length in [(1, 16), (3, 9), (2, 32)]:  # other lengths and batch sizes than the example's
            inputs = text_inputs(batch, length)
            assert_matches(pruned(*inputs), ref(*inputs))
            assert_matches(reloaded(pruned)(*inputs), ref(*inputs))


def test_ffn_only_keeps_every_head(encoder):
    example = text_inputs(2, 8)
    pruned, stats = pare.prune_channels(torch.jit.script(encoder), 0.5, example_inputs=example)
    assert heads_per_layer(pruned) == [4, 4]
    assert [g.channels_after for g in stats.groups if g.name.endswith("intermediate")] == [64, 64]
    with torch.no_grad():
        assert_matches(pruned(*example), reference(pruned)(*example))


def test_global_head_ranking_removes_the_weakest_heads_across_layers(encoder):
    with torch.no_grad():  # layer 1's heads 1-3 are weak: a global ranking takes them all
        for name in ("query", "key", "value"):
            getattr(encoder.layers[1].attention, name).weight[16:] *= 0.01
    example = text_inputs(1, 16)
    local, _ = pare.prune_channels(torch.jit.script(encoder), 0.0, heads=0.375, example_inputs=example)
    assert heads_per_layer(local) == [2, 2]  # 0.375 of 4 heads rounds to 2 in every layer
    pruned, _ = pare.prune_channels(torch.jit.script(encoder), 0.0, heads=0.375, heads_scope="global",
                                    example_inputs=list(example))
    assert heads_per_layer(pruned) == [4, 1]  # 3 of the 8 heads, all from layer 1
    kept = pruned.state_dict()["layers.1.attention.query.weight"]
    assert torch.equal(kept, encoder.layers[1].attention.query.weight[:16])
    with torch.no_grad():
        assert_matches(pruned(*example), reference(pruned)(*example))


def test_pass_in_a_pipeline(encoder):
    example = text_inputs(1, 16)
    module, report = pare.Pipeline([pare.PruneChannels(0.5, heads=0.25, example_inputs=example)]).run(
        torch.jit.script(encoder))
    assert heads_attribute(module) == [3, 3]
    entry = report["prune_channels"]
    assert entry.metrics["heads"] == 0.25
    with torch.no_grad():
        assert_matches(module(*example), reference(module)(*example))


VIT = vit_reference.SMALL
vision_transformer = vit_reference.small_vit


def test_vision_transformer_mlp_neurons_removed():
    torch.manual_seed(0)
    vit = vision_transformer()
    images = torch.randn(2, 3, 32, 32)
    pruned, stats = pare.prune_channels(torch.jit.script(vit), 0.5, example_inputs=images[:1])
    widths = {g.name: (g.channels_before, g.channels_after) for g in stats.groups}
    assert widths["encoder.layers.encoder_layer_0.mlp.0"] == (128, 64)
    for block in vit.encoder.layers:  # the reference: torchvision's ViT with the pruned MLP widths
        block.mlp[0], block.mlp[3] = nn.Linear(64, 64), nn.Linear(64, 64)
    vit.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert (pruned(images) - vit(images)).abs().max().item() <= 1e-4
        assert (reloaded(pruned)(images) - vit(images)).abs().max().item() <= 1e-4


def test_bad_inputs_are_clear_errors(encoder):
    scripted = torch.jit.script(encoder)
    example = text_inputs(1, 8)
    with pytest.raises(pare.InvalidArgument, match="forward takes 2 inputs; set example_inputs"):
        pare.prune_channels(scripted, 0.5)
    with pytest.raises(pare.InvalidArgument, match="forward takes 2 inputs but example_inputs has 1"):
        pare.prune_channels(scripted, 0.5, example_inputs=example[0])
    with pytest.raises(pare.InvalidArgument, match=r"heads 1\.5.* outside \[0, 1\]"):
        pare.prune_channels(scripted, 0.5, heads=1.5, example_inputs=example)
    with pytest.raises(pare.InvalidArgument, match="both input_shape and example_inputs"):
        pare.prune_channels(scripted, 0.5, input_shape=[1, 8], example_inputs=example)
    with pytest.raises(pare.InvalidArgument, match="heads_scope"):
        pare.PruneChannels(0.5, heads=0.5, heads_scope="everywhere", example_inputs=example)
    with pytest.raises(pare.Error, match="does not run on inputs of shape 1x8, 1x8x3"):
        pare.prune_channels(scripted, 0.5, example_inputs=(example[0], torch.ones(1, 8, 3, dtype=torch.long)))


@pytest.mark.parametrize("scope", ["local", "global"])
def test_vision_transformer_heads_of_multihead_attention_removed(scope):
    """torchvision's ViT: nn.MultiheadAttention's packed projection is written out,
    a quarter of its heads and half the MLP neurons go, and the result equals a
    reference built from the kept weights, also when reloaded by stock torch."""
    torch.manual_seed(0)
    vit = vision_transformer()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        original = vit(images)
    pruned, stats = pare.prune_channels(torch.jit.script(vit), 0.5, heads=0.25, heads_scope=scope,
                                        example_inputs=images[:1])
    attention = [g for g in stats.groups if g.head_size > 0]
    assert len(attention) == 2 and all(g.head_size == 16 and not g.blocked_by for g in attention)
    assert sum(g.channels_before - g.channels_after for g in attention) == 2 * 16  # 2 of 8 heads
    state = pruned.state_dict()
    assert not any("in_proj" in name for name in state)
    reference = vit_reference.reference(state, VIT)
    assert [block.self_attention.heads() for block in reference.encoder.layers] in ([3, 3], [2, 4], [4, 2])
    with torch.no_grad():
        expected = reference(images)
        assert (pruned(images) - expected).abs().max().item() <= 1e-4
        assert (reloaded(pruned)(images) - expected).abs().max().item() <= 1e-4
        assert (pruned(images) - original).abs().max().item() > 1e-3  # heads did go: not the original model


def test_multihead_attention_that_cannot_be_followed_keeps_its_heads():
    """Sequence-first nn.MultiheadAttention is left as it was: heads stay, the model still prunes and runs."""

    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(32, 4)
            self.ffn = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))

        def forward(self, x):
            y, _ = self.attention(x, x, x, need_weights=False)
            return self.ffn(x + y)

    torch.manual_seed(0)
    model = SequenceFirst().eval()
    x = torch.randn(5, 2, 32)
    pruned, stats = pare.prune_channels(torch.jit.script(model), 0.5, heads=0.25, example_inputs=x)
    attention = [g for g in stats.groups if g.head_size > 0]
    assert [(g.name, g.channels_before, g.channels_after, g.head_size) for g in attention] == [("attention", 32, 32, 8)]
    assert attention[0].blocked_by == "nn.MultiheadAttention: batch_first=False (sequence-first inputs)"
    assert "attention.in_proj_weight" in pruned.state_dict()
    assert pruned.state_dict()["ffn.0.weight"].shape[0] == 32
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape


def test_traced_vision_transformer_keeps_its_heads_and_says_why():
    """A traced nn.MultiheadAttention has no forward pare can rewrite (nor its attributes):
    its heads stay, its MLP neurons go, and the report names the module and the reason."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(vision_transformer(), images[:1], check_trace=False)
    pruned, stats = pare.prune_channels(traced, 0.5, heads=0.25, example_inputs=images[:1])
    kept = [g for g in stats.groups if g.blocked_by.startswith("nn.MultiheadAttention")]
    assert [g.name for g in kept] == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    assert all(g.channels_before == g.channels_after == 64 and "unknown signature" in g.blocked_by for g in kept)
    assert stats.params_after < stats.params_before
    with torch.no_grad():
        assert pruned(images).shape == (2, 10)
