// Bindings for pare.InferenceCache, pare.CacheStats and (when built with
// Redis) pare.RedisTier. The GIL is released while hashing, comparing and
// waiting on another caller's computation; it is held only to call `fn`.

#include "bindings.hpp"

#include <chrono>

#include "pare/cache/cache.hpp"
#include "pare/cache/fingerprint.hpp"
#ifdef PARE_WITH_REDIS
#include "pare/cache/redis_tier.hpp"
#endif

namespace pare::python {
namespace {

// A time to live: None (or 0) for no expiry; at most ten years.
std::chrono::milliseconds to_ttl(const py::object& seconds, const char* what) {
  if (seconds.is_none()) return std::chrono::milliseconds(0);
  return from_seconds<std::chrono::milliseconds>(seconds.cast<double>(), std::string(what) + " (None: no expiry)",
                                                 10 * 365 * 86400.0);
}

// A Python exception raised by fn, carried to every caller waiting on the same
// computation; each waiter gets its own copy of this carrier. (A
// py::error_already_set can be restored only once, so each caller raises the
// exception instance anew.)
struct PythonError : std::exception, CopyableError {
  std::shared_ptr<PyObject> exception;  // released with the GIL held
  const char* what() const noexcept override { return "exception raised by fn"; }
  [[noreturn]] void rethrow_copy() const override { throw PythonError(*this); }
};

// fn(x), or fn(*x) for a tuple or list, as an IValue; called with the GIL released around us.
c10::IValue call_python(const py::function& fn, const py::object& x) {
  py::gil_scoped_acquire gil;
  py::object result;
  try {
    result = (py::isinstance<py::tuple>(x) || py::isinstance<py::list>(x)) ? fn(*x) : fn(x);
  } catch (py::error_already_set& e) {
    PythonError error;
    error.exception.reset(e.value().inc_ref().ptr(), [](PyObject* p) {
      py::gil_scoped_acquire gil;
      Py_DECREF(p);
    });
    throw error;
  }
  try {
    return unlinked(torch::jit::toTypeInferredIValue(result));
  } catch (const std::exception&) {
    throw Error("InferenceCache.get_or_compute: fn returned a " + py::str(py::type::of(result)).cast<std::string>() +
                "; expected tensors, or tuples, lists or dicts of tensors");
  }
}

std::shared_ptr<InferenceCache> make_cache(size_t capacity_bytes, const py::object& ttl, size_t max_entries,
                                           size_t shards, std::string key_namespace, bool verify,
                                           const py::object& remote) {
  auto options = InferenceCacheOptions()
                     .capacity_bytes(capacity_bytes)
                     .ttl(to_ttl(ttl, "InferenceCache(ttl=...)"))
                     .max_entries(max_entries)
                     .shards(shards)
                     .key_namespace(std::move(key_namespace))
                     .verify(verify);
  if (!remote.is_none()) {
#ifdef PARE_WITH_REDIS
    require(py::isinstance<RedisTier>(remote), "InferenceCache(remote=...): expected a pare.RedisTier");
    options.remote(remote.cast<std::shared_ptr<RedisTier>>());
#else
    throw Error("InferenceCache(remote=...): this pare was built without the Redis tier (PARE_WITH_REDIS=OFF)");
#endif
  }
  return std::make_shared<InferenceCache>(options);
}

void bind_stats(py::module_& m) {
  py::class_<CacheStats>(m, "CacheStats", "A snapshot of an InferenceCache's counters.")
      .def_readonly("hits", &CacheStats::hits)
      .def_readonly("misses", &CacheStats::misses)
      .def_readonly("evictions", &CacheStats::evictions)
      .def_readonly("rejected", &CacheStats::rejected)
      .def_readonly("expirations", &CacheStats::expirations)
      .def_readonly("collisions", &CacheStats::collisions)
      .def_readonly("coalesced", &CacheStats::coalesced)
      .def_readonly("remote_hits", &CacheStats::remote_hits)
      .def_readonly("remote_errors", &CacheStats::remote_errors)
      .def_readonly("bytes", &CacheStats::bytes)
      .def_readonly("entries", &CacheStats::entries)
      .def_readonly("seconds_saved", &CacheStats::seconds_saved)
      .def_property_readonly("hit_ratio", &CacheStats::hit_ratio)
      .def("to_prometheus", [](const CacheStats& s, const std::map<std::string, std::string>& labels) {
        return s.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
      }, py::arg("labels") = std::map<std::string, std::string>{})
      .def("__repr__", [](const CacheStats& s) {
        return "<CacheStats hits=" + std::to_string(s.hits) + " misses=" + std::to_string(s.misses) +
               " entries=" + std::to_string(s.entries) + " bytes=" + std::to_string(s.bytes) + ">";
      });
}

#ifdef PARE_WITH_REDIS
void bind_redis(py::module_& m) {
  py::class_<RedisTier, std::shared_ptr<RedisTier>>(m, "RedisTier", "A Redis server shared by caches and processes.")
      .def(py::init([](const std::string& host, int port, const std::string& key_prefix, double timeout,
                       const py::object& ttl, const py::object& password, const py::object& user) {
             auto options = RedisTierOptions()
                                .host(host)
                                .port(port)
                                .key_prefix(key_prefix)
                                .timeout(from_seconds<std::chrono::milliseconds>(timeout, "RedisTier(timeout=...)", 3600,
                                                                            /*zero_allowed=*/false))
                                .ttl(to_ttl(ttl, "RedisTier(ttl=...)"));
             if (!password.is_none()) options.password(password.cast<std::string>());
             if (!user.is_none()) options.user(user.cast<std::string>());
             py::gil_scoped_release release;  // construction connects to check the credentials
             return std::make_shared<RedisTier>(options);
           }),
           py::arg("host") = "127.0.0.1", py::arg("port") = 6379, py::arg("key_prefix") = "pare:cache:",
           py::arg("timeout") = 0.1, py::arg("ttl") = py::none(), py::arg("password") = py::none(),
           py::arg("user") = py::none())
      .def("ping", &RedisTier::ping, py::call_guard<py::gil_scoped_release>())
      .def("clear", &RedisTier::clear, py::call_guard<py::gil_scoped_release>());
}
#endif

}  // namespace

void bind_cache(py::module_& m) {
  bind_stats(m);
  m.def("model_fingerprint", [](const py::object& module) {
    const auto scripted = unwrap_module(module, "model_fingerprint");
    py::gil_scoped_release release;
    return model_fingerprint(scripted);
  }, py::arg("module"), "32 hex digits identifying a ScriptModule's code and weights (XXH3-128 of its TorchScript archive).");
#ifdef PARE_WITH_REDIS
  bind_redis(m);
#endif
  py::class_<InferenceCache, std::shared_ptr<InferenceCache>>(
      m, "InferenceCache", "Exact LRU cache of model outputs keyed by the content of the inputs.")
      .def(py::init(&make_cache), py::arg("capacity_bytes") = size_t(256) << 20, py::arg("ttl") = py::none(),
           py::arg("max_entries") = 0, py::arg("shards") = 8, py::arg("key_namespace") = "", py::arg("verify") = true,
           py::arg("remote") = py::none())
      .def("get_or_compute", [](InferenceCache& cache, const py::object& x, const py::function& fn,
                                const std::string& key_namespace) {
             const auto inputs = to_inputs(x, "InferenceCache.get_or_compute");
             c10::IValue out;
             try {
               py::gil_scoped_release release;
               out = cache.get_or_compute(inputs, [&] { return call_python(fn, x); }, key_namespace);
             } catch (const PythonError& e) {  // the GIL is held again here
               PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e.exception.get())), e.exception.get());
               throw py::error_already_set();
             }
             return torch::jit::toPyObject(out);
           }, py::arg("x"), py::arg("fn"), py::arg("key_namespace") = "",
           "The cached result for x, or fn(x) (fn(*x) for a tuple) computed once, stored and returned.\n"
           "Entries of one key_namespace (e.g. pare.model_fingerprint(model)) never answer another's.")
      .def("get", [](InferenceCache& cache, const py::object& x, const std::string& key_namespace) -> py::object {
             const auto inputs = to_inputs(x, "InferenceCache.get");
             std::optional<c10::IValue> out;
             {
               py::gil_scoped_release release;
               out = cache.get(inputs, key_namespace);
             }
             return out ? torch::jit::toPyObject(*out) : py::none();
           }, py::arg("x"), py::arg("key_namespace") = "")
      .def("put", [](InferenceCache& cache, const py::object& x, const py::object& output, double seconds,
                     const std::string& key_namespace) {
             const auto inputs = to_inputs(x, "InferenceCache.put");
             const auto value = unlinked(torch::jit::toTypeInferredIValue(output));
             py::gil_scoped_release release;
             cache.put(inputs, value, std::chrono::duration<double>(seconds), key_namespace);
           }, py::arg("x"), py::arg("output"), py::arg("compute_seconds") = 0.0, py::arg("key_namespace") = "")
      .def("erase", [](InferenceCache& cache, const py::object& x, const std::string& key_namespace) {
             const auto inputs = to_inputs(x, "InferenceCache.erase");
             py::gil_scoped_release release;
             return cache.erase(inputs, key_namespace);
           }, py::arg("x"), py::arg("key_namespace") = "")
      // Everything that takes the shard locks runs without the GIL: a thread
      // holding a shard lock may need the GIL to drop a Python-linked tensor.
      .def("clear", &InferenceCache::clear, py::call_guard<py::gil_scoped_release>())
      .def("stats", &InferenceCache::stats, py::call_guard<py::gil_scoped_release>())
      .def("to_prometheus", [](const InferenceCache& cache, const std::map<std::string, std::string>& labels) {
             py::gil_scoped_release release;
             return cache.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
           }, py::arg("labels") = std::map<std::string, std::string>{})
      .def("__len__", [](const InferenceCache& cache) {
             py::gil_scoped_release release;
             return cache.stats().entries;
           });
}

}  // namespace pare::python
