import asyncio
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
    runner = pare.Runner(doubling, max_batch=16, max_delay=0.002, threads=1)
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
    assert stats.requests == 240 and stats.failures == 0
    assert stats.batches < 240
    assert sum(n * c for n, c in stats.batch_sizes.items()) == 240


def test_runner_errors_and_metrics(doubling):
    runner = pare.Runner(doubling)
    assert torch.equal(runner(torch.ones(2, 2)), torch.full((2, 2), 3.0))
    with pytest.raises(pare.Error, match="negative input"):
        runner.run(-torch.ones(1, 2))
    text = runner.to_prometheus()
    assert "pare_runner_requests_total 2" in text and "pare_runner_failures_total 1" in text
    stats = runner.stats()
    labelled = stats.to_prometheus({"model": "doubling"})
    assert 'pare_runner_requests_total{model="doubling"} 2' in labelled
    assert 'pare_runner_requests_total{model="doubling"} 2' in runner.to_prometheus({"model": "doubling"})
    assert stats.p50_seconds == pytest.approx(stats.p50_ms / 1e3) and stats.max_seconds >= stats.p50_seconds > 0
    with pytest.raises(pare.InvalidArgument, match="max_batch must be >= 1"):
        pare.Runner(doubling, max_batch=0)
    with pytest.raises(pare.InvalidArgument, match="expected a torch.jit.ScriptModule"):
        pare.Runner(torch.nn.Linear(2, 2))


def test_close_and_with_stop_the_runner(doubling):
    with pare.Runner(doubling, max_batch=4, threads=2) as runner:
        assert not runner.closed
        assert torch.equal(runner(torch.ones(1, 2)), torch.full((1, 2), 3.0))
    assert runner.closed
    for call in (lambda: runner.run(torch.ones(1, 2)), lambda: runner(torch.ones(1, 2)), runner.stats,
                 runner.to_prometheus, lambda: runner.swap(doubling)):
        with pytest.raises(pare.RuntimeFailure, match="the runner is closed"):
            call()
    runner.close()  # closing twice is allowed

    async def after_close():
        return await runner.run_async(torch.ones(1, 2))
    with pytest.raises(pare.RuntimeFailure, match="Runner.run_async: the runner is closed"):
        asyncio.run(after_close())

    # A with block closes the runner when its body raises, too, and lets the exception through.
    with pytest.raises(KeyError):
        with pare.Runner(doubling) as failing:
            raise KeyError("body")
    assert failing.closed


def test_close_while_calls_run_lets_them_finish(doubling):
    runner = pare.Runner(doubling, max_batch=8, max_delay=0.001, threads=2)
    answers, errors = [], []
    started = threading.Barrier(5)

    def client():
        started.wait()
        for i in range(50):
            try:
                answers.append(torch.equal(runner(torch.full((1, 2), float(i))), torch.full((1, 2), 2.0 * i + 1)))
            except pare.RuntimeFailure as e:
                errors.append(str(e))
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    [t.start() for t in threads]
    started.wait()
    runner.close()
    [t.join() for t in threads]
    assert all(answers)  # every call that ran answered right; the others were told the runner is closed
    assert all("the runner is closed" in e for e in errors)


def test_runner_torn_down_right_after_its_requests(doubling):
    # The workers may still hold the last batch's inputs when the runner goes
    # away; tearing it down must neither wait on the GIL nor lose a result.
    for round in range(30):
        runner = pare.Runner(doubling, max_batch=8, max_delay=0.0005, threads=2)
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


def test_overloaded_and_timeout_are_runtime_failures():
    assert issubclass(pare.Overloaded, pare.RuntimeFailure) and issubclass(pare.Timeout, pare.RuntimeFailure)
    assert issubclass(pare.Timeout, TimeoutError) and not issubclass(pare.Timeout, ValueError)


def test_deadline_already_past_times_out_without_running(doubling):
    for max_batch in (1, 8):
        runner = pare.Runner(doubling, max_batch=max_batch)
        with pytest.raises(pare.Timeout, match="never ran"):
            runner.run(torch.ones(1, 2), timeout=0.0)
        assert torch.equal(runner.run(torch.ones(1, 2), timeout=60.0), torch.full((1, 2), 3.0))
        stats = runner.stats()
        assert stats.timeouts == 1 and stats.batches == 1
    with pytest.raises(TypeError, match="timeout"):  # the signature names the one keyword run takes
        runner.run(torch.ones(1, 2), deadline=1.0)
    with pytest.raises(pare.InvalidArgument, match="timeout must be in"):
        pare.Runner(doubling, timeout=-1.0)


def test_lone_caller_never_waits_for_company(doubling):
    # An hour of delay, half an hour of gap: the runner has never held more than
    # this one caller's request, so each goes at once (rule 3, docs/serving.md).
    runner = pare.Runner(doubling, max_batch=64, max_delay=3600.0, batch_gap=1800.0)
    for i in range(3):
        x = torch.full((1, 2), float(i))
        assert torch.equal(runner.run(x, timeout=60.0), x * 2 + 1)
    assert runner.stats().timeouts == 0 and runner.stats().batch_sizes == {1: 3}


def test_full_queue_rejects_with_overloaded(doubling):
    # One worker and a batch that waits an hour for company (max_batch 4, batch_gap
    # an hour too): two requests sit in the queue and the next ones are refused.
    async def scenario():
        runner = pare.Runner(doubling, max_batch=4, max_delay=3600.0, batch_gap=3600.0, max_queue=2)
        first = runner.run_async(torch.full((1, 2), 1.0))
        second = runner.run_async(torch.full((1, 2), 2.0))
        with pytest.raises(pare.Overloaded, match="max_queue"):
            await runner.run_async(torch.full((1, 2), 3.0))
        with pytest.raises(pare.Overloaded):
            runner.run(torch.full((1, 2), 4.0))
        stats = runner.stats()
        assert stats.queue_depth == 2 and stats.rejected == 2
        assert "pare_runner_rejected_total 2" in runner.to_prometheus()
        del runner  # shutting down runs what is queued: nothing is lost
        return await first, await second

    a, b = asyncio.run(scenario())
    assert torch.equal(a, torch.full((1, 2), 3.0)) and torch.equal(b, torch.full((1, 2), 5.0))


def test_run_async_never_blocks_the_event_loop(doubling):
    runner = pare.Runner(doubling, max_batch=8, threads=2)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.ensure_future(ticker())
        results = await asyncio.gather(*(runner.run_async(torch.full((1, 3), float(i))) for i in range(64)))
        with pytest.raises(pare.Error, match="negative input"):
            await runner.run_async(-torch.ones(1, 3))
        with pytest.raises(pare.Timeout):
            await runner.run_async(torch.ones(1, 3), timeout=0.0)
        tick_task.cancel()
        return results, ticks

    results, ticks = asyncio.run(scenario())
    assert all(torch.equal(y, torch.full((1, 3), 2.0 * i + 1)) for i, y in enumerate(results))
    assert ticks > 0  # the loop kept running while requests were out
    with pytest.raises(RuntimeError):
        runner.run_async(torch.ones(1, 3))  # no running event loop


def test_swap_keeps_serving(doubling):
    class Tripling(torch.nn.Module):
        def forward(self, x):
            return x * 3

    runner = pare.Runner(doubling, max_batch=8, threads=2)
    errors = []

    def client(t):
        for i in range(50):
            try:
                y = runner(torch.full((1, 2), 1.0))
                if not (torch.equal(y, torch.full((1, 2), 3.0))):
                    errors.append(y)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    for _ in range(10):
        runner.swap(doubling)
    [t.join() for t in threads]
    assert errors == [] and runner.stats().swaps == 10
    runner.swap(torch.jit.script(Tripling()))
    assert torch.equal(runner(torch.ones(1, 2)), torch.full((1, 2), 3.0))
    assert torch.equal(runner(torch.full((1, 2), 2.0)), torch.full((1, 2), 6.0))
    with pytest.raises(ValueError, match="ScriptModule"):
        runner.swap(Tripling())


def test_each_batch_size_gets_its_own_module_up_to_model_copies(doubling):
    runner = pare.Runner(doubling, max_batch=8, model_copies=2)
    for rows in (1, 2, 3, 1):
        x = torch.rand(rows, 3)
        assert torch.equal(runner.run(x), x * 2 + 1)
    assert runner.stats().model_copies == 2  # batch 3 shares the module: beyond the limit
    assert "pare_runner_model_copies 2" in runner.to_prometheus()
    assert pare.Runner(doubling, max_batch=8, model_copies=0).stats().model_copies == 0


def test_runner_hint_tunes_and_reports(doubling):
    example = torch.rand(1, 3)
    runner = pare.Runner(doubling, hint="throughput", example_inputs=[example])
    stats = runner.stats()
    assert stats.hint == "throughput"
    assert stats.concurrency >= 1 and stats.threads == stats.concurrency
    assert stats.max_batch in (1, 32) and stats.batch_saving < 1
    assert torch.equal(runner.run(example), example * 2 + 1)
    assert runner.stats().caller_batches == 1
    assert 'pare_runner_config{hint="throughput"' in runner.to_prometheus()
    # Settings given explicitly win over the hint's.
    kept = pare.Runner(doubling, hint="latency", example_inputs=[example], max_batch=4, concurrency=3)
    assert (kept.stats().max_batch, kept.stats().concurrency, kept.stats().hint) == (4, 3, "latency")
    with pytest.raises(ValueError, match="expected one of throughput, latency"):
        pare.Runner(doubling, hint="fast", example_inputs=[example])
    with pytest.raises(ValueError, match="needs example_inputs"):
        pare.Runner(doubling, hint="throughput")
    with pytest.raises(ValueError, match="concurrency must be in"):
        pare.Runner(doubling, concurrency=-2)


def test_runner_hint_on_a_two_input_encoder():
    from test_recalibrate_batchnorm import TwoInputEncoder
    torch.manual_seed(4)
    ids, mask = torch.randint(0, 50, (1, 6)), torch.ones(1, 6, dtype=torch.long)
    model = torch.jit.trace(TwoInputEncoder().eval(), (ids, mask))
    runner = pare.Runner(model, hint="throughput", example_inputs=[ids, mask])
    answers = []

    def client(t):
        x = torch.randint(0, 50, (1, 6))
        answers.append(torch.allclose(runner.run(x, mask), model(x, mask), atol=1e-5))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert answers == [True] * 8
    assert runner.stats().requests == 8 and runner.stats().hint == "throughput"
