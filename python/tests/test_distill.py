import gzip
import os

import pytest
import torch
import torch.nn.functional as F

import pare
from conftest import FashionCNN


def reference_loss(s, t, y, temperature, alpha):
    """The formula in plain PyTorch, as a Python user would write it."""
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.softmax(t.detach() / temperature, dim=1),
                  reduction="batchmean")
    loss = alpha * temperature ** 2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(s, y)
    return loss


def load_split(directory, prefix, limit):
    with gzip.open(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")) as f:
        images = torch.frombuffer(bytearray(f.read()[16:16 + limit * 784]), dtype=torch.uint8)
    with gzip.open(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        labels = torch.frombuffer(bytearray(f.read()[8:8 + limit]), dtype=torch.uint8)
    x = (images.view(-1, 1, 28, 28).float() / 255 - 0.2860) / 0.3530
    return x, labels.long()


def batches(x, y, size=64):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def data():
    directory = os.environ.get("PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
    return load_split(directory, "train", 2048), load_split(directory, "t10k", 1000)


@pytest.fixture(scope="module")
def teacher(data):
    (x, y), _ = data
    torch.manual_seed(0)
    model = FashionCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        for xb, yb in batches(x, y):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return torch.jit.script(model.eval())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.7), (8.0, 1.0), (2.0, 0.0)])
def test_loss_and_gradients_match_plain_pytorch(dtype, tolerance, temperature, alpha):
    torch.manual_seed(int(temperature * 10 + alpha * 100))
    s = (torch.randn(32, 10, dtype=dtype) * 3).requires_grad_()
    t = torch.randn(32, 10, dtype=dtype) * 3
    y = torch.randint(0, 10, (32,))
    s_ref = s.detach().clone().requires_grad_()

    loss = pare.distillation_loss(s, t, y, temperature=temperature, alpha=alpha)
    expected = reference_loss(s_ref, t, y, temperature, alpha)
    assert isinstance(loss, torch.Tensor) and loss.dtype == dtype and loss.dim() == 0
    assert abs(loss.item() - expected.item()) <= tolerance * max(1.0, abs(expected.item()))
    loss.backward()
    expected.backward()
    assert torch.allclose(s.grad, s_ref.grad, rtol=tolerance, atol=tolerance)


def test_teacher_gets_no_gradient_and_targets_are_optional_at_alpha_one():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    pare.distillation_loss(s, t, temperature=2.0, alpha=1.0).backward()
    assert s.grad is not None and t.grad is None


def test_loss_rejects_bad_inputs():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    for kwargs in [dict(temperature=0.0), dict(temperature=-1.0), dict(alpha=1.5), dict(alpha=-0.5)]:
        with pytest.raises(ValueError):
            pare.distillation_loss(s, t, y, **kwargs)
    with pytest.raises(pare.InvalidArgument, match="targets are required"):
        pare.distillation_loss(s, t)
    with pytest.raises(pare.InvalidArgument, match="shape"):
        pare.distillation_loss(s, torch.randn(4, 5), y)
    with pytest.raises(pare.InvalidArgument, match="dtype"):
        pare.distillation_loss(s, t.double(), y)
    with pytest.raises(pare.InvalidArgument, match="floating-point"):
        pare.distillation_loss(s.long(), t.long(), y)
    with pytest.raises(pare.InvalidArgument, match="class indices"):
        pare.distillation_loss(s, t, torch.tensor([0, 1, 7, 0]))


def test_python_training_loop_matches_plain_pytorch(data, teacher):
    (x, y), _ = data
    torch.manual_seed(3)
    student = FashionCNN(4, 8, 16)
    twin = FashionCNN(4, 8, 16)
    twin.load_state_dict(student.state_dict())
    opt_a = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for xb, yb in batches(x[:1024], y[:1024]):
        with torch.no_grad():
            t = teacher(xb)
        for model, opt, fn in [(student, opt_a, pare.distillation_loss), (twin, opt_b, None)]:
            opt.zero_grad()
            s = model(xb)
            loss = fn(s, t, yb, temperature=4.0, alpha=0.7) if fn else reference_loss(s, t, yb, 4.0, 0.7)
            loss.backward()
            opt.step()
            if fn:
                losses.append(loss.item())
    assert losses[-1] < losses[0]
    for a, b in zip(student.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-4)


def test_distill_pass_in_a_pipeline_keeps_masks_and_recovers(data, teacher):
    (x, y), (xt, yt) = data
    pipeline = pare.Pipeline([
        pare.L1Prune(amount=0.85, scope="global"),
        pare.Distill(teacher=teacher, data=batches(x, y), epochs=2, lr=1e-3, eval_data=batches(xt, yt, 500)),
    ])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = pipeline.run(teacher)
    student, report = result
    entry = report["distill"]
    assert entry.series_name == "loss" and len(entry.series) == 2
    assert entry.metrics["accuracy_after"] > entry.metrics["accuracy_before"]
    assert entry.total_sparsity == pytest.approx(report["l1_prune"].total_sparsity)
    params = dict(student.named_parameters())
    assert set(result.masks) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    for name, mask in result.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0
    with torch.no_grad():
        accuracy = (student(xt).argmax(1) == yt).float().mean().item() * 100
    assert accuracy == pytest.approx(entry.metrics["accuracy_after"], abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not student.training and not teacher.training


def test_distill_streams_python_data_with_progress(data, teacher):
    (x, y), _ = data
    epochs_seen, progress = [], []

    def per_epoch(epoch):
        epochs_seen.append(epoch)
        return iter(batches(x[:256], y[:256]))

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:256], y[:256]), batch_size=64)
    for source, expected_steps in [(per_epoch, -1), (loader, 8)]:
        progress.clear()
        p = pare.Distill(teacher=teacher, data=source, epochs=2, alpha=1.0, optimizer="sgd", lr=0.01,
                         progress=lambda step, steps, loss: progress.append((step, steps, loss)))
        _, report = pare.Pipeline([p]).run(torch.jit.script(FashionCNN(4, 8, 16)))
        assert report["distill"].metrics["steps"] == 8
        assert [s for s, _, _ in progress] == list(range(1, 9))
        assert all(steps == expected_steps for _, steps, _ in progress)
    assert epochs_seen == [0, 1]

    one_shot = iter(batches(x[:128], y[:128]))
    with pytest.raises(pare.InvalidArgument, match="no batches in epoch 2"):
        pare.Pipeline([pare.Distill(teacher=teacher, data=one_shot, epochs=2)]).run(teacher)

    def broken(epoch):
        raise KeyError("no such shard")

    with pytest.raises(KeyError, match="no such shard"):
        pare.Pipeline([pare.Distill(teacher=teacher, data=broken)]).run(teacher)


def test_distill_validates_arguments(data, teacher):
    (x, y), _ = data
    good = batches(x[:64], y[:64])
    with pytest.raises(ValueError, match="ScriptModule"):
        pare.Distill(teacher=FashionCNN(), data=good)
    with pytest.raises(ValueError, match="pairs"):
        pare.Distill(teacher=teacher, data=[x[:64]])
    with pytest.raises(ValueError, match="optimizer"):
        pare.Distill(teacher=teacher, data=good, optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        pare.Distill(teacher=teacher, data=good, epochs=0)
    with pytest.raises(ValueError, match="no training batches"):
        pare.Distill(teacher=teacher, data=[])


def test_apply_masks_in_place(teacher):
    model = torch.jit.script(FashionCNN())
    mask = torch.rand(32, 16 * 7 * 7) > 0.5
    pare.apply_masks(model, {"fc1.weight": mask})
    assert torch.count_nonzero(model.fc1.weight[~mask]) == 0
    with pytest.raises(ValueError, match="no parameter"):
        pare.apply_masks(model, {"fc9.weight": mask})


def test_a_batch_the_model_rejects_is_a_pare_error(data):
    (train_x, train_y), _ = data
    torch.manual_seed(0)
    teacher = torch.jit.script(FashionCNN().eval())
    student = torch.jit.script(FashionCNN())
    wrong = [(torch.randn(8, 3, 28, 28), train_y[:8])]  # three channels for a one-channel CNN
    with pytest.raises(pare.Error, match=r"the student failed on a batch of shape \[8, 3, 28, 28\]") as caught:
        pare.Pipeline([pare.Distill(teacher=teacher, data=wrong, epochs=1)]).run(student)
    # Batches the model rejects are the caller's data: a bad argument, never a RuntimeError.
    assert type(caught.value) is pare.InvalidArgument and not isinstance(caught.value, RuntimeError)
    assert "Traceback" not in str(caught.value)  # LibTorch's line, not its whole traceback


def test_the_callers_teacher_keeps_its_training_mode(data):
    (train_x, train_y), _ = data
    torch.manual_seed(0)
    teacher = torch.jit.script(FashionCNN())  # scripted in training mode, as nn.Modules start
    assert teacher.training
    student = torch.jit.script(FashionCNN().eval())
    pare.Pipeline([pare.Distill(teacher=teacher, data=batches(train_x[:128], train_y[:128]), epochs=1)]).run(student)
    assert teacher.training and all(m.training for m in teacher.modules())
