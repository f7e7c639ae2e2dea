// Bindings for the tensor pool: pare.TensorPool, its leases as context
// managers, and the allocator guard as a context manager.

#include "bindings.hpp"

#include <memory>

#include <torch/csrc/Dtype.h>

#include "pare/pool/pool.hpp"

namespace pare::python {
namespace {

at::ScalarType to_dtype(const py::handle& dtype) {
  if (!THPDtype_Check(dtype.ptr()))
    throw Error("TensorPool.acquire: dtype must be a torch.dtype such as torch.float32, got " +
                py::str(py::type::of(dtype)).cast<std::string>());
  return reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type;
}

std::string memory_name(PoolMemory memory) { return to_string(memory); }

PoolMemory parse_memory(const std::string& memory) {
  try {
    return parse_pool_memory(memory);
  } catch (const Error& e) {
    throw Error(std::string("TensorPool: ") + e.what());
  }
}

at::Device to_device(const py::handle& device) {
  try {
    return at::Device(py::str(device).cast<std::string>());
  } catch (const c10::Error&) {
    throw Error("TensorPool.acquire: device " + py::str(device).cast<std::string>() +
                " is not a device name; expected \"cpu\"");
  }
}

// pare.PoolStats: C++'s PoolStats field for field.
void bind_pool_stats(py::module_& m) {
  using S = PoolStats;
  py::class_<S>(m, "PoolStats", "A snapshot of a TensorPool's counters (TensorPool.stats()).")
      .def_readonly("acquires", &S::acquires, "Storage requests (leases and guarded allocations).")
      .def_readonly("hits", &S::hits, "Requests served from idle storage.")
      .def_readonly("misses", &S::misses, "Requests served by a new allocation.")
      .def_readonly("releases", &S::releases, "Storage returned to the pool.")
      .def_readonly("evictions", &S::evictions, "Idle storage freed by the byte bound or trim().")
      .def_readonly("outlived", &S::outlived, "Leases that ended while a copy of their tensor lived on.")
      .def_readonly("blocks_idle", &S::blocks_idle, "Idle blocks held for reuse.")
      .def_readonly("bytes_idle", &S::bytes_idle, "Bytes of idle storage held for reuse.")
      .def_readonly("bytes_in_use", &S::bytes_in_use, "Capacity of storage handed out and not yet returned.")
      .def_readonly("peak_bytes_in_use", &S::peak_bytes_in_use, "Largest bytes_in_use so far.")
      .def_readonly("small", &S::small, "Leases below small_bytes, given plain storage (not in acquires).")
      .def("to_prometheus", [](const S& s, const std::map<std::string, std::string>& labels) {
        return s.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
      }, py::arg("labels") = std::map<std::string, std::string>{},
         "Prometheus text exposition (pare_pool_* families), with these labels on every sample.")
      .def("__repr__", [](const S& s) {
        return "<PoolStats acquires=" + std::to_string(s.acquires) + " hits=" + std::to_string(s.hits) +
               " bytes_idle=" + std::to_string(s.bytes_idle) + ">";
      });
}

/// `with pare.PoolAllocatorGuard(pool): ...` — C++'s PoolAllocatorGuard from
/// __enter__ to __exit__. The guard is thread-local: enter and exit on the same
/// thread (a with block does).
class AllocatorScope {
 public:
  explicit AllocatorScope(std::shared_ptr<TensorPool> pool) : pool_(std::move(pool)) {}
  void enter() {
    if (guard_) throw Error("PoolAllocatorGuard: this guard is already active", Error::Kind::Runtime);
    guard_ = std::make_unique<PoolAllocatorGuard>(*pool_);
  }
  void exit() { guard_.reset(); }

 private:
  std::shared_ptr<TensorPool> pool_;
  std::unique_ptr<PoolAllocatorGuard> guard_;  // movable scope, pinned guard
};

}  // namespace

void bind_pool(py::module_& m) {
  bind_pool_stats(m);
  py::class_<PooledTensor>(m, "PooledTensor",
                           "A lease on pooled storage. `with lease as t:` gives the tensor and ends the lease "
                           "on exit; the storage returns to the pool once no tensor uses it (so `t` itself "
                           "keeps it until rebound or deleted).")
      .def_property_readonly("tensor", &PooledTensor::tensor, "The leased tensor.")
      .def_property_readonly("valid", &PooledTensor::valid, "Whether the lease is still held.")
      .def("release", &PooledTensor::release,
           "Ends the lease; True if the storage went back to the pool now.")
      .def("__enter__", &PooledTensor::tensor, "Returns the leased tensor.")
      .def("__exit__", [](PooledTensor& lease, const py::object&, const py::object&, const py::object&) {
        lease.release();
        return false;
      }, py::arg("exc_type"), py::arg("exc_value"), py::arg("traceback"), "Ends the lease.");

  py::class_<AllocatorScope>(m, "PoolAllocatorGuard",
                             "with PoolAllocatorGuard(pool): routes torch's CPU allocations on this thread "
                             "through the pool (a host pool).")
      .def(py::init<std::shared_ptr<TensorPool>>(), py::arg("pool"), "A guard over `pool`, active inside a with block.")
      .def("__enter__", [](AllocatorScope& scope) { scope.enter(); }, "Starts routing this thread's CPU allocations.")
      .def("__exit__", [](AllocatorScope& scope, const py::object&, const py::object&, const py::object&) {
        scope.exit();
        return false;
      }, py::arg("exc_type"), py::arg("exc_value"), py::arg("traceback"), "Stops routing.");

  const TensorPoolOptions defaults;
  py::class_<TensorPool, std::shared_ptr<TensorPool>>(
      m, "TensorPool", "Reusable storage for tensors: leases (acquire) and, in a PoolAllocatorGuard, torch's own "
                       "CPU allocations; thread-safe.")
      .def(py::init([](int64_t max_bytes, std::vector<int64_t> size_classes, bool poison, const std::string& memory,
                       int64_t device_index, int64_t small_bytes) {
             return std::make_shared<TensorPool>(TensorPoolOptions().max_bytes(max_bytes).size_classes(std::move(size_classes)).poison(poison)
                                   .memory(parse_memory(memory)).device_index(device_index).small_bytes(small_bytes));
           }),
           py::kw_only(), py::arg("max_bytes") = defaults.max_bytes(), py::arg("size_classes") = defaults.size_classes(),
           py::arg("poison") = defaults.poison(), py::arg("memory") = memory_name(defaults.memory()),
           py::arg("device_index") = defaults.device_index(), py::arg("small_bytes") = defaults.small_bytes(),
           "max_bytes: idle bytes kept for reuse. size_classes: byte sizes of the storage classes, ascending "
           "(empty: four per power of two). poison: fill returned storage with 0xFF. memory: \"host\" "
           "(pageable), \"pinned\" (page-locked, for fast copies to a GPU) or \"cuda\" (GPU memory on "
           "device_index). Host leases under small_bytes come from LibTorch's allocator.")
      .def("acquire",
           [](TensorPool& pool, const std::vector<int64_t>& shape, const py::object& dtype,
              const py::object& device) { return pool.acquire(shape, to_dtype(dtype), to_device(device)); },
           py::arg("shape"), py::arg("dtype") = py::module_::import("torch").attr("float32"),
           py::arg("device") = "cpu", "A lease (pare.PooledTensor) on a tensor of this shape and dtype.")
      .def("trim", &TensorPool::trim, "Frees all idle storage; returns the bytes freed.")
      .def("stats", &TensorPool::stats, "A snapshot of the counters (pare.PoolStats).")
      .def("to_prometheus",
           [](const TensorPool& pool, const std::map<std::string, std::string>& labels) {
             return pool.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
           },
           py::arg("labels") = std::map<std::string, std::string>{},
           "Prometheus text exposition of stats(), with these labels on every sample.")
      .def("size_class", &TensorPool::size_class, py::arg("nbytes"), "The storage size a request of nbytes gets.")
      .def_property_readonly("max_bytes", [](const TensorPool& pool) { return pool.options().max_bytes(); },
                             "Idle bytes kept for reuse.");

  m.def("install_pool_allocator", &install_pool_allocator,
        "Installs pare's routing CPU allocator (TensorPool does it when needed); idempotent.");
  m.def("unpooled_cpu_allocations", &unpooled_cpu_allocations,
        "CPU allocations that went to LibTorch's allocator since install_pool_allocator(), on all threads.");
}

}  // namespace pare::python
