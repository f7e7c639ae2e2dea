"""pare.InferenceCache from Python, with real torch tensors and models."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import pare


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    net.eval()
    calls = []

    def forward(x):
        calls.append(1)
        with torch.no_grad():
            return net(x)

    forward.calls = calls
    forward.net = net
    return forward


def test_a_repeated_input_is_computed_once(model):
    cache = pare.InferenceCache(capacity_bytes=1 << 20)
    x = torch.randn(1, 1, 28, 28)
    first = cache.get_or_compute(x, model)
    second = cache.get_or_compute(x.clone(), model)
    assert len(model.calls) == 1
    assert torch.equal(first, model.net(x).detach())
    assert torch.equal(second, first)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert stats.hit_ratio == pytest.approx(0.5)
    assert len(cache) == 1


def test_same_bytes_with_other_shape_or_dtype_is_another_entry():
    cache = pare.InferenceCache()
    x = torch.arange(6, dtype=torch.float32)
    cache.put(x, torch.ones(1))
    assert cache.get(x.view(torch.int32)) is None
    assert cache.get(x.reshape(2, 3)) is None
    assert torch.equal(cache.get(x), torch.ones(1))


def test_tuples_are_passed_as_arguments_and_outputs_keep_structure():
    cache = pare.InferenceCache()
    a, b = torch.randn(3), torch.randn(3)
    out = cache.get_or_compute((a, b), lambda p, q: (p + q, {"diff": p - q}))
    again = cache.get_or_compute((a, b), lambda p, q: pytest.fail("should be cached"))
    assert torch.equal(again[0], a + b) and torch.equal(again[1]["diff"], a - b)
    assert torch.equal(out[0], again[0])


def test_results_are_copies():
    cache = pare.InferenceCache()
    x = torch.randn(4)
    out = cache.get_or_compute(x, lambda t: t * 2)
    out.fill_(0)
    assert torch.equal(cache.get(x), x * 2)


def test_ttl_expires_entries():
    cache = pare.InferenceCache(ttl=0.05)
    x = torch.randn(2)
    cache.put(x, torch.ones(1))
    assert cache.get(x) is not None
    time.sleep(0.1)
    assert cache.get(x) is None
    assert cache.stats().expirations == 1


def test_concurrent_threads_compute_once_and_release_the_gil_while_waiting():
    cache = pare.InferenceCache()
    x = torch.randn(8)
    calls = []

    def slow(t):
        calls.append(1)
        time.sleep(0.2)  # needs the GIL back from the waiting threads to finish
        return t + 1

    results = [None] * 8
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, cache.get_or_compute(x, slow))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1
    assert all(torch.equal(r, x + 1) for r in results)
    assert cache.stats().misses == 1 and cache.stats().hits == 7


def test_an_exception_reaches_every_waiting_caller_and_caches_nothing():
    cache = pare.InferenceCache()
    x = torch.ones(4)
    errors, barrier = [], threading.Barrier(4)

    def fn(t):
        time.sleep(0.1)
        raise KeyError("model down")

    def call():
        barrier.wait()
        try:
            cache.get_or_compute(x, fn)
        except KeyError as e:
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and all("model down" in str(e) for e in errors)
    assert len(cache) == 0


def test_bad_arguments_raise_invalid_argument():
    with pytest.raises(pare.InvalidArgument):
        pare.InferenceCache(ttl=-1)
    with pytest.raises(ValueError):
        pare.InferenceCache(capacity_bytes=0)
    cache = pare.InferenceCache()
    with pytest.raises(pare.InvalidArgument):
        cache.get_or_compute(torch.randn(2), lambda t: object())
    with pytest.raises(pare.InvalidArgument, match="CPU"):
        cache.get(torch.empty(2, device="meta"))


def test_stats_as_prometheus_text():
    cache = pare.InferenceCache()
    x = torch.randn(2)
    cache.get_or_compute(x, lambda t: t)
    text = cache.to_prometheus({"model": "cnn"})
    assert '# TYPE pare_cache_misses_total counter' in text
    assert 'pare_cache_misses_total{model="cnn"} 1\n' in text
    assert cache.stats().to_prometheus({"model": "cnn"}) == text


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(*extra_args):
    server = shutil.which("redis-server")
    if server is None or not hasattr(pare, "RedisTier"):
        pytest.skip("redis-server is not installed (Debian package redis-server) or pare was built without Redis")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             *extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture
def redis_port():
    yield from _redis_server()


@pytest.fixture
def redis_port_with_password():
    yield from _redis_server("--requirepass", "s3cret")


def test_redis_password_is_sent_and_a_wrong_one_fails_at_construction(redis_port_with_password):
    port = redis_port_with_password
    tier = pare.RedisTier(port=port, key_prefix="auth:", password="s3cret")
    x = torch.ones(3)
    pare.InferenceCache(remote=tier).get_or_compute(x, lambda t: t * 2)
    other = pare.InferenceCache(remote=tier)
    assert torch.equal(other.get(x), x * 2)
    assert other.stats().remote_hits == 1
    with pytest.raises(pare.InvalidArgument, match="refused AUTH"):
        pare.RedisTier(port=port, password="wrong")
    with pytest.raises(pare.InvalidArgument, match="requires a password"):
        pare.RedisTier(port=port)
    with pytest.raises(pare.InvalidArgument, match="needs a password"):
        pare.RedisTier(port=port, user="cache")


PEER = """
import sys, torch, pare
cache = pare.InferenceCache(remote=pare.RedisTier(port=int(sys.argv[1]), key_prefix="py:"))
computed = []
out = cache.get_or_compute(torch.arange(12.0).reshape(3, 4), lambda t: (computed.append(1), t.sum(0))[1])
print("computed" if computed else "reused", out.tolist())
"""


def test_two_processes_share_results_through_redis(redis_port):
    env = dict(os.environ)
    run = lambda: subprocess.run([sys.executable, "-c", PEER, str(redis_port)], env=env, capture_output=True,
                                 text=True, check=True).stdout.split(" ", 1)
    first, second = run(), run()
    assert first[0] == "computed" and second[0] == "reused"
    assert first[1] == second[1]
    tier = pare.RedisTier(port=redis_port, key_prefix="py:")
    cache = pare.InferenceCache(remote=tier)
    assert torch.equal(cache.get(torch.arange(12.0).reshape(3, 4)), torch.arange(12.0).reshape(3, 4).sum(0))
    assert cache.stats().remote_hits == 1
    stats = tier.stats()
    assert isinstance(stats, pare.RedisTierStats)
    assert (stats.gets, stats.puts, stats.errors, stats.skipped) == (1, 0, 0, 0)
    assert 'pare_redis_tier_gets_total{tier="py"} 1' in stats.to_prometheus({"tier": "py"})
    assert tier.to_prometheus({"tier": "py"}) == stats.to_prometheus({"tier": "py"})
