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

std::shared_ptr<InferenceCache> make_cache(int64_t capacity_bytes, const py::object& ttl, int64_t max_entries,
                                           int64_t shards, std::string key_namespace, bool verify,
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
  using S = CacheStats;
  py::class_<S>(m, "CacheStats", "A snapshot of an InferenceCache's counters (InferenceCache.stats()).")
      .def_readonly("hits", &S::hits, "Lookups answered from memory or the remote tier.")
      .def_readonly("misses", &S::misses, "Lookups that found nothing usable.")
      .def_readonly("evictions", &S::evictions, "Entries dropped to respect capacity_bytes or max_entries.")
      .def_readonly("rejected", &S::rejected, "Results not stored: larger than a quarter of capacity_bytes.")
      .def_readonly("expirations", &S::expirations, "Entries dropped because their ttl passed.")
      .def_readonly("collisions", &S::collisions, "Same key, different inputs (seen only with verify on).")
      .def_readonly("coalesced", &S::coalesced, "Callers that waited for another caller's computation.")
      .def_readonly("remote_hits", &S::remote_hits, "Hits served by the remote tier.")
      .def_readonly("remote_errors", &S::remote_errors, "Remote failures: unreachable, timeout, corrupt value.")
      .def_readonly("bytes", &S::bytes, "Bytes held now.")
      .def_readonly("entries", &S::entries, "Entries held now.")
      .def_readonly("seconds_saved", &S::seconds_saved, "Sum over hits of the compute seconds of the entry hit.")
      .def_property_readonly("hit_ratio", &S::hit_ratio, "hits / (hits + misses); 0 before any lookup.")
      .def("to_prometheus", [](const S& s, const std::map<std::string, std::string>& labels) {
        return s.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
      }, py::arg("labels") = std::map<std::string, std::string>{},
         "Prometheus text exposition (metric names pare_cache_*), with these labels on every sample.")
      .def("__repr__", [](const S& s) {
        return "<CacheStats hits=" + std::to_string(s.hits) + " misses=" + std::to_string(s.misses) +
               " entries=" + std::to_string(s.entries) + " bytes=" + std::to_string(s.bytes) + ">";
      });
}

#ifdef PARE_WITH_REDIS
void bind_redis_stats(py::module_& m) {
  using S = RedisTierStats;
  py::class_<S>(m, "RedisTierStats", "A snapshot of a RedisTier's counters (RedisTier.stats()).")
      .def_readonly("gets", &S::gets, "Lookups sent to the server.")
      .def_readonly("puts", &S::puts, "Stores sent to the server.")
      .def_readonly("errors", &S::errors, "Failed commands or connections.")
      .def_readonly("skipped", &S::skipped, "Calls not sent because the server failed less than retry_after ago.")
      .def("to_prometheus", [](const S& s, const std::map<std::string, std::string>& labels) {
        return s.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
      }, py::arg("labels") = std::map<std::string, std::string>{},
         "Prometheus text exposition (pare_redis_tier_* families), with these labels on every sample.")
      .def("__repr__", [](const S& s) {
        return "<RedisTierStats gets=" + std::to_string(s.gets) + " puts=" + std::to_string(s.puts) +
               " errors=" + std::to_string(s.errors) + ">";
      });
}

void bind_redis(py::module_& m) {
  bind_redis_stats(m);
  const RedisTierOptions defaults;
  const auto seconds = [](std::chrono::milliseconds d) { return std::chrono::duration<double>(d).count(); };
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
           py::arg("host") = defaults.host(), py::arg("port") = defaults.port(), py::kw_only(),
           py::arg("key_prefix") = defaults.key_prefix(), py::arg("timeout") = seconds(defaults.timeout()),
           py::arg("ttl") = py::none(), py::arg("password") = py::none(), py::arg("user") = py::none(),
           "A Redis server at host:port as the second tier of InferenceCache(remote=...). timeout: seconds per "
           "command; ttl: seconds an entry lives there (None: no expiry). Construction checks the credentials "
           "(pare.InvalidArgument when refused); an unreachable server is tried again later.")
      .def("ping", &RedisTier::ping, py::call_guard<py::gil_scoped_release>(), "Whether the server answers now.")
      .def("stats", &RedisTier::stats, py::call_guard<py::gil_scoped_release>(),
           "A snapshot of the counters (pare.RedisTierStats).")
      .def("to_prometheus", [](const RedisTier& tier, const std::map<std::string, std::string>& labels) {
             py::gil_scoped_release release;
             return tier.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
           }, py::arg("labels") = std::map<std::string, std::string>{},
           "Prometheus text exposition of stats(), with these labels on every sample.")
      .def("clear", &RedisTier::clear, py::call_guard<py::gil_scoped_release>(),
           "Deletes every key under key_prefix on the server; returns how many.");
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
  const InferenceCacheOptions defaults;
  py::class_<InferenceCache, std::shared_ptr<InferenceCache>>(
      m, "InferenceCache", "Exact LRU cache of model outputs keyed by the content of the inputs; thread-safe.")
      .def(py::init(&make_cache), py::kw_only(), py::arg("capacity_bytes") = defaults.capacity_bytes(),
           py::arg("ttl") = py::none(), py::arg("max_entries") = defaults.max_entries(),
           py::arg("shards") = defaults.shards(), py::arg("key_namespace") = defaults.key_namespace(),
           py::arg("verify") = defaults.verify(), py::arg("remote") = py::none(),
           "capacity_bytes: bytes the cache may hold (an entry over a quarter of it is not stored). ttl: seconds "
           "an entry lives (None: no expiry). max_entries: 0 for no limit besides bytes. shards: independent LRU "
           "lists. key_namespace: mixed into every key. verify: compare stored inputs byte for byte on a hit. "
           "remote: a pare.RedisTier shared between processes.")
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
           }, py::arg("x"), py::arg("fn"), py::kw_only(), py::arg("key_namespace") = "",
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
           }, py::arg("x"), py::kw_only(), py::arg("key_namespace") = "",
           "The cached result for x, or None.")
      .def("put", [](InferenceCache& cache, const py::object& x, const py::object& output, double seconds,
                     const std::string& key_namespace) {
             const auto inputs = to_inputs(x, "InferenceCache.put");
             const auto value = unlinked(torch::jit::toTypeInferredIValue(output));
             py::gil_scoped_release release;
             cache.put(inputs, value, std::chrono::duration<double>(seconds), key_namespace);
           }, py::arg("x"), py::arg("output"), py::kw_only(), py::arg("compute_seconds") = 0.0,
           py::arg("key_namespace") = "",
           "Stores output for x. compute_seconds: what computing it cost (counted in seconds_saved on hits).")
      .def("erase", [](InferenceCache& cache, const py::object& x, const std::string& key_namespace) {
             const auto inputs = to_inputs(x, "InferenceCache.erase");
             py::gil_scoped_release release;
             return cache.erase(inputs, key_namespace);
           }, py::arg("x"), py::kw_only(), py::arg("key_namespace") = "", "Drops x's entry; True if there was one.")
      // Everything that takes the shard locks runs without the GIL: a thread
      // holding a shard lock may need the GIL to drop a Python-linked tensor.
      .def("clear", &InferenceCache::clear, py::call_guard<py::gil_scoped_release>(), "Drops every entry.")
      .def("stats", &InferenceCache::stats, py::call_guard<py::gil_scoped_release>(),
           "A snapshot of the counters (pare.CacheStats).")
      .def("to_prometheus", [](const InferenceCache& cache, const std::map<std::string, std::string>& labels) {
             py::gil_scoped_release release;
             return cache.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
           }, py::arg("labels") = std::map<std::string, std::string>{},
           "Prometheus text exposition of stats(), with these labels on every sample.")
      .def("__len__", [](const InferenceCache& cache) {
             py::gil_scoped_release release;
             return cache.stats().entries;
           }, "Entries held now.");
}

}  // namespace pare::python
