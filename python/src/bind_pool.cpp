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
  py::class_<PoolStats>(m, "PoolStats", "A snapshot of a TensorPool's counters.")
      .def_readonly("acquires", &PoolStats::acquires)
      .def_readonly("hits", &PoolStats::hits)
      .def_readonly("misses", &PoolStats::misses)
      .def_readonly("releases", &PoolStats::releases)
      .def_readonly("evictions", &PoolStats::evictions)
      .def_readonly("outlived", &PoolStats::outlived)
      .def_readonly("blocks_idle", &PoolStats::blocks_idle)
      .def_readonly("bytes_idle", &PoolStats::bytes_idle)
      .def_readonly("bytes_in_use", &PoolStats::bytes_in_use)
      .def_readonly("peak_bytes_in_use", &PoolStats::peak_bytes_in_use)
      .def_readonly("small", &PoolStats::small)
      .def("__repr__", [](const PoolStats& s) {
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
      .def_property_readonly("tensor", &PooledTensor::tensor)
      .def_property_readonly("valid", &PooledTensor::valid)
      .def("release", &PooledTensor::release,
           "Ends the lease; True if the storage went back to the pool now.")
      .def("__enter__", &PooledTensor::tensor)
      .def("__exit__", [](PooledTensor& lease, const py::args&) {
        lease.release();
        return false;
      });

  py::class_<AllocatorScope>(m, "PoolAllocatorGuard",
                             "with PoolAllocatorGuard(pool): routes torch's CPU allocations on this thread "
                             "through the pool (a host pool).")
      .def(py::init<std::shared_ptr<TensorPool>>(), py::arg("pool"))
      .def("__enter__", [](AllocatorScope& scope) { scope.enter(); return py::none(); })
      .def("__exit__", [](AllocatorScope& scope, const py::args&) {
        scope.exit();
        return false;
      });

  py::class_<TensorPool, std::shared_ptr<TensorPool>>(m, "TensorPool")
      .def(py::init([](size_t max_bytes, std::vector<int64_t> size_classes, bool poison, const std::string& memory,
                       int device_index, size_t small_bytes) {
             return std::make_shared<TensorPool>(TensorPoolOptions().max_bytes(max_bytes).size_classes(std::move(size_classes)).poison(poison)
                                   .memory(parse_memory(memory)).device_index(device_index).small_bytes(small_bytes));
           }),
           py::arg("max_bytes") = TensorPoolOptions().max_bytes(), py::arg("size_classes") = std::vector<int64_t>{},
           py::arg("poison") = false, py::arg("memory") = "host", py::arg("device_index") = 0,
           py::arg("small_bytes") = TensorPoolOptions().small_bytes(),
           "memory: \"host\" (pageable), \"pinned\" (page-locked, for fast copies to a GPU) or \"cuda\" "
           "(GPU memory on device_index). Host leases under small_bytes come from LibTorch's allocator.")
      .def("acquire",
           [](TensorPool& pool, const std::vector<int64_t>& shape, const py::object& dtype,
              const py::object& device) { return pool.acquire(shape, to_dtype(dtype), to_device(device)); },
           py::arg("shape"), py::arg("dtype") = py::module_::import("torch").attr("float32"),
           py::arg("device") = "cpu")
      .def("trim", &TensorPool::trim, "Frees all idle storage; returns the bytes freed.")
      .def("stats", &TensorPool::stats)
      .def("to_prometheus",
           [](const TensorPool& pool, const std::map<std::string, std::string>& labels) {
             return pool.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
           },
           py::arg("labels") = std::map<std::string, std::string>{})
      .def("size_class", &TensorPool::size_class, py::arg("nbytes"))
      .def_property_readonly("max_bytes", [](const TensorPool& pool) { return pool.options().max_bytes(); });

  m.def("install_pool_allocator", &install_pool_allocator);
  m.def("unpooled_cpu_allocations", &unpooled_cpu_allocations);
}

}  // namespace pare::python
