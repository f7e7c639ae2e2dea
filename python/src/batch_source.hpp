#pragma once
// Python data as a pare::BatchSource, one rule for QuantizeInt8's calibration
// and Distill's training data: a list or tuple is converted once and held in
// memory; any other iterable (a DataLoader) is iterated afresh every epoch, a
// generator once; a callable is called with the epoch for that epoch's iterable.

#include <memory>
#include <optional>
#include <string>

#include "bindings.hpp"
#include "pare/core/batches.hpp"
#include "pare/core/error.hpp"

namespace pare::python {

/// A Python object held by C++ callbacks that run while the pipeline has
/// released the GIL: copies share one reference, and the last owner drops it
/// under the GIL.
inline std::shared_ptr<py::object> hold(py::object object) {
  return std::shared_ptr<py::object>(new py::object(std::move(object)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

inline std::string type_name(const py::handle& value) { return py::str(py::type::of(value)).cast<std::string>(); }

/// `convert(item, what)` turns one Python batch into a T that holds no link to
/// a Python object (passes drop batches without the GIL).
template <class T, class Convert>
BatchSource<T> to_batch_source(const py::object& data, Convert convert, const char* what) {
  if (py::isinstance<py::list>(data) || py::isinstance<py::tuple>(data)) {
    std::vector<T> batches;
    for (const auto& item : data) batches.push_back(convert(item, what));
    return BatchSource<T>(std::move(batches));
  }
  const bool callable = PyCallable_Check(data.ptr()) != 0;
  if (!callable && !py::hasattr(data, "__iter__"))
    throw Error(std::string(what) + ": expected a list of batches, an iterable of them (a DataLoader, a generator) "
                "or a callable epoch -> iterable; got " + type_name(data));
  const int64_t length = !callable && py::hasattr(data, "__len__") ? int64_t(py::len(data)) : -1;
  auto held = hold(data);
  return BatchSource<T>(
      [held, callable, convert, what](int64_t epoch) -> typename BatchSource<T>::Reader {
        py::gil_scoped_acquire gil;
        auto iterator = hold(py::iter(callable ? (*held)(epoch) : *held));
        return [iterator, convert, what]() -> std::optional<T> {
          py::gil_scoped_acquire gil;
          auto item = py::reinterpret_steal<py::object>(PyIter_Next(iterator->ptr()));
          if (!item) {
            if (PyErr_Occurred()) throw py::error_already_set();
            return std::nullopt;
          }
          return convert(item, what);
        };
      },
      length);
}

}  // namespace pare::python
