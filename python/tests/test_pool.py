"""pare.TensorPool from Python: leases as context managers, reuse, stats, the allocator guard."""

import threading

import pytest
import torch

import pare


def test_context_manager_gives_a_tensor_and_reuses_its_storage():
    pool = pare.TensorPool(max_bytes=64 << 20, small_bytes=0)
    with pool.acquire((64, 1024), torch.float32) as t:
        assert isinstance(t, torch.Tensor)
        assert t.shape == (64, 1024) and t.dtype == torch.float32 and t.is_contiguous()
        t.fill_(2.0)
        assert float(t.sum()) == 2.0 * 64 * 1024
        first = t.data_ptr()
    del t  # `t` outlives the with block; the storage returns when it goes
    with pool.acquire((128, 512), torch.float32) as u:
        assert u.data_ptr() == first
    stats = pool.stats()
    assert stats.acquires == 2 and stats.hits == 1 and stats.misses == 1
    assert stats.outlived == 2  # both names outlived their leases


def test_a_live_tensor_is_never_handed_out_again():
    pool = pare.TensorPool(small_bytes=0)
    with pool.acquire((1000,), torch.int64) as kept:
        kept.fill_(5)
    with pool.acquire((1000,), torch.int64) as other:
        assert other.data_ptr() != kept.data_ptr()
        other.fill_(-1)
    assert bool((kept == 5).all())


def test_release_and_stats():
    pool = pare.TensorPool(max_bytes=1 << 20, small_bytes=0)
    lease = pool.acquire([256, 256], torch.float32)  # 256 KiB
    assert lease.valid
    assert lease.release() is True
    assert lease.release() is False
    assert not lease.valid
    with pytest.raises(pare.Error):
        lease.tensor
    stats = pool.stats()
    assert stats.bytes_idle == pool.size_class(256 * 256 * 4)
    assert stats.bytes_in_use == 0
    assert pool.trim() == stats.bytes_idle
    assert pool.stats().bytes_idle == 0
    text = pool.to_prometheus({"pool": "py"})
    assert 'pare_pool_misses_total{pool="py"} 1\n' in text
    assert pool.stats().to_prometheus({"pool": "py"}) == text


def test_byte_bound():
    pool = pare.TensorPool(max_bytes=2 * 4096 * 4, small_bytes=0)
    leases = [pool.acquire((4096,), torch.float32) for _ in range(4)]
    for lease in leases:
        lease.release()
    stats = pool.stats()
    assert stats.bytes_idle <= pool.max_bytes
    assert stats.evictions == 2


def test_poison():
    pool = pare.TensorPool(poison=True, small_bytes=0)
    lease = pool.acquire((64,), torch.float32)
    lease.tensor.fill_(1.0)
    lease.release()
    with pool.acquire((64,), torch.float32) as t:
        assert bool(torch.isnan(t).all())


def test_invalid_arguments():
    pool = pare.TensorPool(small_bytes=0)
    with pytest.raises(pare.InvalidArgument, match="negative"):
        pool.acquire((3, -2))
    with pytest.raises(ValueError, match="dtype"):
        pool.acquire((3,), torch.qint8)
    with pytest.raises(ValueError, match="dtype"):
        pool.acquire((3,), "float32")
    with pytest.raises(ValueError, match="CPU"):
        pool.acquire((3,), torch.float32, "meta")
    with pytest.raises(ValueError, match="ascending"):
        pare.TensorPool(size_classes=[4096, 1024])


def test_allocator_guard_routes_torch_allocations_on_this_thread():
    pool = pare.TensorPool(small_bytes=0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 28 * 28, 10)).eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        reference = conv(x)
        for _ in range(2):
            with pare.PoolAllocatorGuard(pool):
                out = conv(x)
        warm = pool.stats()
        assert warm.acquires > 0
        for _ in range(3):
            with pare.PoolAllocatorGuard(pool):
                out = conv(x)
        assert pool.stats().misses == warm.misses  # steady state: everything reused
    assert torch.allclose(out, reference, atol=1e-6)

    seen = {}
    with pare.PoolAllocatorGuard(pool):
        before = pool.stats().acquires
        worker = threading.Thread(target=lambda: seen.setdefault("t", torch.empty(1000)))
        worker.start()
        worker.join()
        assert pool.stats().acquires == before  # other threads are not routed
        torch.empty(1000)
        assert pool.stats().acquires == before + 1
    torch.empty(1000)
    assert pool.stats().acquires == before + 1


def test_small_leases_go_to_the_system_allocator():
    pool = pare.TensorPool(small_bytes=64 << 10)
    with pool.acquire((1000,), torch.float32) as t:
        t.fill_(1.0)
    with pool.acquire((64, 1024), torch.float32) as u:
        u.fill_(1.0)
    stats = pool.stats()
    assert stats.small == 1 and stats.acquires == 1
