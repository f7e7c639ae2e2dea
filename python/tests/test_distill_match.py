"""Distillation on hidden states and attention maps: pare.Distill(..., match=[...]),
pare.submodule_outputs against eager PyTorch's forward hooks, pare.DistillMatch."""

import os
import pathlib
import sys

import pytest
import torch

import pare
from test_distill import batches, load_split

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "support"))
from text_models import Encoder  # noqa: E402
from vision_models import TinyViT  # noqa: E402


@pytest.fixture(scope="module")
def data():
    directory = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
    return load_split(directory, "train", 2048), load_split(directory, "t10k", 500)


@pytest.fixture(scope="module")
def teacher(data):
    (x, y), _ = data
    torch.manual_seed(0)
    model = TinyViT(dim=32, depth=4, heads=4, ffn=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for images, labels in batches(x, y):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return torch.jit.script(model.eval())


def student(seed=1):
    torch.manual_seed(seed)
    return torch.jit.script(TinyViT(dim=32, depth=2, heads=4, ffn=64).eval())


def hooked_outputs(eager, inputs, names):
    """What eager PyTorch's forward hooks see at each named submodule: the reference.
    `inputs`: one tensor, or a tuple of the model's inputs."""
    seen = {}
    modules = dict(eager.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        eager(*inputs) if isinstance(inputs, tuple) else eager(inputs)
    for h in handles:
        h.remove()
    return seen


def test_submodule_outputs_equal_eager_forward_hooks_scripted_and_traced():
    torch.manual_seed(2)
    eager = TinyViT(dim=16, depth=3, heads=2, ffn=32).eval()
    images = torch.randn(4, 1, 28, 28)
    names = ["blocks.1", "blocks.2.attention.attend", "norm", "blocks.0.attention.query"]
    seen = hooked_outputs(eager, images, names)
    for model in (torch.jit.script(eager), torch.jit.trace(eager, images)):
        graph_before = str(model.graph)
        outputs = pare.submodule_outputs(model, images, names)
        assert len(outputs) == len(names)
        for name, output in zip(names, outputs):
            torch.testing.assert_close(output, seen[name], rtol=1e-5, atol=1e-5)
        assert str(model.graph) == graph_before


def test_bad_names_raise_invalid_argument_listing_the_submodules(teacher, data):
    (x, y), _ = data
    with pytest.raises(pare.InvalidArgument, match=r"no submodule 'blocks.7'.*'blocks' has the submodules \[0, 1, 2, 3\]"):
        pare.submodule_outputs(teacher, x[:2], ["blocks.7"])
    with pytest.raises(pare.InvalidArgument, match=r"the teacher has no submodule 'blocks.9'"):
        pare.Distill(teacher, batches(x[:128], y[:128]), match=["blocks.9"])
    with pytest.raises(pare.InvalidArgument, match="tuple"):
        pare.Distill(teacher, batches(x[:128], y[:128]), match=[("blocks.3",)])
    with pytest.raises(pare.InvalidArgument, match="match loss 'kl'"):
        pare.DistillMatch("blocks.3", loss="kl")
    with pytest.raises(pare.InvalidArgument, match="the student has no submodule 'blocks.3'"):
        pare.Pipeline([pare.Distill(teacher, batches(x[:128], y[:128]), match=["blocks.3"])]).run(student())


def test_distill_layers_mapping_and_match_loss():
    pairs = pare.DistillMatch.layers("blocks", 4, "blocks", 2, loss="cosine", weight=0.5)
    assert [(p.teacher, p.student, p.loss, p.weight) for p in pairs] == [
        ("blocks.1", "blocks.0", "cosine", 0.5), ("blocks.3", "blocks.1", "cosine", 0.5)]
    s, t = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    torch.testing.assert_close(pare.match_loss(s, t), torch.nn.functional.mse_loss(s, t))
    expected = (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).mean()
    torch.testing.assert_close(pare.match_loss(s, t, "cosine"), expected)


def hidden_distance(model, teacher, images):
    s, = pare.submodule_outputs(model, images, ["blocks.1"])
    t, = pare.submodule_outputs(teacher, images, ["blocks.3"])
    return torch.nn.functional.mse_loss(s, t).item()


def test_matching_hidden_states_and_attention_moves_the_student_towards_the_teacher(teacher, data):
    (x, y), (test_x, _) = data
    train = batches(x, y)
    match = pare.DistillMatch.layers("blocks", 4, "blocks", 2) + [
        pare.DistillMatch("blocks.3.attention.attend", "blocks.1.attention.attend", weight=10.0)]
    before = hidden_distance(student(), teacher, test_x)
    plain = pare.Pipeline([pare.Distill(teacher, train, epochs=2, lr=2e-3)]).run(student())
    matched = pare.Pipeline([pare.Distill(teacher, train, epochs=2, lr=2e-3, match=match)]).run(student())
    entry = matched.report["distill"]
    assert entry.labels["match_2"] == "blocks.3.attention.attend -> blocks.1.attention.attend (mse, 10.000000)"
    assert entry.metrics["match_1_loss"] > 0
    after = hidden_distance(matched.module, teacher, test_x)
    unmatched = hidden_distance(plain.module, teacher, test_x)
    assert after < 0.5 * before, (before, after)
    assert after < 0.5 * unmatched, (unmatched, after)
    s_attention, = pare.submodule_outputs(matched.module, test_x, ["blocks.1.attention.attend"])
    p_attention, = pare.submodule_outputs(plain.module, test_x, ["blocks.1.attention.attend"])
    t_attention, = pare.submodule_outputs(teacher, test_x, ["blocks.3.attention.attend"])
    mse = torch.nn.functional.mse_loss
    assert mse(s_attention, t_attention) < mse(p_attention, t_attention)


def test_head_pruned_student_is_matched_on_hidden_states(teacher, data):
    """Removing heads inlines the blocks into forward; their outputs are still found, and Distill matches them."""
    (x, y), _ = data
    pruned, _ = pare.prune_channels(student(), 0.5, example_inputs=x[:8], heads=0.25)
    assert "prim::CallMethod" not in str(pruned.graph)
    with torch.no_grad():
        last = pare.submodule_outputs(pruned, [x[:8]], ["blocks.1"])[0]
        assert torch.equal(pruned.head(pruned.norm(last)[:, 0]), pruned(x[:8]))
    match = pare.DistillMatch.layers("blocks", 4, "blocks", 2)
    result = pare.Pipeline([pare.Distill(teacher, list(batches(x[:512], y[:512])), epochs=1, match=match)]).run(pruned)
    assert {"match_0_loss", "match_1_loss"} <= set(result.report["distill"].metrics)


@pytest.mark.parametrize("architecture, names", [
    ("mobilenet_v2", ["features.3", "features.7", "features.18"]),
    ("efficientnet_b0", ["features.2", "features.4.1"]),
    ("resnet18", ["layer2", "layer3.1"]),
])
def test_torchvision_submodules_are_found_whole_and_fully_inlined(architecture, names):
    """Nested Sequentials, squeeze-excite and residual adds, read from the calls and
    from a graph whose every call was inlined (constant pooling moves their constants away)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    eager = getattr(torchvision.models, architecture)().eval()
    images = torch.randn(2, 3, 64, 64)
    seen = hooked_outputs(eager, images, names)
    scripted = torch.jit.script(eager)
    for inline in (False, True):
        if inline:
            torch._C._jit_pass_inline(scripted.forward.graph)
            assert "prim::CallMethod" not in str(scripted.forward.graph)
        for name, output in zip(names, pare.submodule_outputs(scripted, images, names)):
            torch.testing.assert_close(output, seen[name], rtol=1e-4, atol=1e-4)


def test_two_input_text_encoder_submodules_scripted_and_fully_inlined():
    """A BERT-style encoder called with ids and a padding mask: each layer's
    output, taken from the calls and from a fully inlined graph, is eager's."""
    torch.manual_seed(4)
    eager = Encoder(vocab=60, hidden=32, layers=3, heads=4, ffn=64, max_length=16).eval()
    ids = torch.randint(0, 60, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0  # a padded row: the additive mask must reach every layer
    names = ["layers.0", "layers.2", "layers.1.attention", "norm"]
    seen = hooked_outputs(eager, (ids, mask), names)
    scripted = torch.jit.script(eager)
    for inline in (False, True):
        if inline:
            torch._C._jit_pass_inline(scripted.forward.graph)
            assert "prim::CallMethod" not in str(scripted.forward.graph)
        outputs = pare.submodule_outputs(scripted, [ids, mask], names)
        assert len(outputs) == len(names)
        for name, output in zip(names, outputs):
            torch.testing.assert_close(output, seen[name], rtol=1e-5, atol=1e-5)
