import threading

import pytest
import torch

import pare


@pytest.fixture
def doubling():
    class Doubling(torch.nn.Module):
        def forward(self, x):
            if bool((x < 0).any()):
                raise RuntimeError("negative input")
            return x * 2 + 1
    return torch.jit.script(Doubling())


def test_batched_runner_gives_each_thread_its_row(doubling):
    runner = pare.Runner(doubling, max_batch=16, max_delay_ms=2.0, threads=1)
    wrong = []

    def client(t):
        for i in range(40):
            x = torch.full((1, 3), float(t * 100 + i))
            if not torch.equal(runner.run(x), x * 2 + 1):
                wrong.append((t, i))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert wrong == []
    stats = runner.stats()
    assert stats["requests"] == 240 and stats["failures"] == 0
    assert stats["forward_passes"] < 240
    assert sum(n * c for n, c in stats["batch_sizes"].items()) == 240


def test_runner_errors_and_metrics(doubling):
    runner = pare.Runner(doubling)
    assert torch.equal(runner(torch.ones(2, 2)), torch.full((2, 2), 3.0))
    with pytest.raises(pare.Error, match="negative input"):
        runner.run(-torch.ones(1, 2))
    text = runner.metrics_text()
    assert "pare_runner_requests_total 2" in text and "pare_runner_failures_total 1" in text
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        pare.Runner(doubling, max_batch=0)
    with pytest.raises(ValueError, match="expected a torch.jit.ScriptModule"):
        pare.Runner(torch.nn.Linear(2, 2))


def test_runner_torn_down_right_after_its_requests(doubling):
    # The workers may still hold the last batch's inputs when the runner goes
    # away; tearing it down must neither wait on the GIL nor lose a result.
    for round in range(30):
        runner = pare.Runner(doubling, max_batch=8, max_delay_ms=0.5, threads=2)
        outputs = {}

        def client(t):
            for i in range(5):
                value = float(round * 100 + t * 10 + i)
                outputs[(t, i)] = (value, runner(torch.full((1, 2), value)))  # the input dies here

        threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        runner.stats()
        del runner
        assert all(torch.equal(y, torch.full((1, 2), v * 2 + 1)) for v, y in outputs.values())
