// PoolStats::to_prometheus: the pool's counters in Prometheus' text format.
// Apart from the storage code (pool.cpp): it reads only the stats snapshot.
// Also the name table of PoolMemory.

#include "pare/core/metrics.hpp"
#include "pare/pool/pool.hpp"

#include "core/enum_names.hpp"

namespace pare {

namespace {
constexpr std::pair<PoolMemory, const char*> kPoolMemoryNames[] = {
    {PoolMemory::Host, "host"}, {PoolMemory::Pinned, "pinned"}, {PoolMemory::Cuda, "cuda"}};
}  // namespace

std::string to_string(PoolMemory memory) { return detail::name_of(kPoolMemoryNames, memory); }

PoolMemory parse_pool_memory(const std::string& name) {
  return detail::parse_name(kPoolMemoryNames, name, "pool memory");
}

std::vector<std::string> pool_memory_names() { return detail::names_of(kPoolMemoryNames); }

std::string PoolStats::to_prometheus(const prometheus::Labels& labels) const {
  const PoolStats& s = *this;
  std::string out;
  auto counter = [&](const char* name, const char* help, int64_t value) {
    prometheus::append_metric(out, name, "counter", help, static_cast<double>(value), labels);
  };
  auto gauge = [&](const char* name, const char* help, int64_t value) {
    prometheus::append_metric(out, name, "gauge", help, static_cast<double>(value), labels);
  };
  counter("pare_pool_acquires_total", "Storage requests served by the tensor pool.", s.acquires);
  counter("pare_pool_hits_total", "Requests served from idle storage.", s.hits);
  counter("pare_pool_misses_total", "Requests served by a new allocation.", s.misses);
  counter("pare_pool_releases_total", "Storage returned to the pool.", s.releases);
  counter("pare_pool_evictions_total", "Idle storage freed by the byte bound or trim.", s.evictions);
  counter("pare_pool_outlived_total", "Leases that ended while a copy of their tensor lived on.",
          s.outlived);
  gauge("pare_pool_idle_bytes", "Bytes of idle storage kept for reuse.", s.bytes_idle);
  gauge("pare_pool_idle_blocks", "Idle storage blocks kept for reuse.", s.blocks_idle);
  gauge("pare_pool_in_use_bytes", "Bytes of pooled storage in use.", s.bytes_in_use);
  gauge("pare_pool_peak_in_use_bytes", "Peak bytes of pooled storage in use.", s.peak_bytes_in_use);
  counter("pare_pool_small_total", "Leases below small_bytes given plain storage by LibTorch's allocator.", s.small);
  return out;
}

}  // namespace pare
