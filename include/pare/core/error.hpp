#pragma once
// pare::Error — the one exception type every public entry point throws.

#include <stdexcept>
#include <string>

namespace pare {

/// Thrown for invalid arguments and unsupported models. The message says what
/// was wrong and what is expected. `kind()` tells bindings how to map it
/// (Python: InvalidArgument -> ValueError, Runtime -> RuntimeError,
/// Overloaded -> pare.Overloaded, Timeout -> pare.Timeout).
class Error : public std::runtime_error {
 public:
  enum class Kind {
    InvalidArgument,
    Runtime,
    Overloaded,  ///< refused at once: the runner's queue is full (RunnerOptions::max_queue)
    Timeout,     ///< the request's deadline passed while it waited; it never ran
  };

  explicit Error(const std::string& what, Kind kind = Kind::InvalidArgument)
      : std::runtime_error(what), kind_(kind) {}

  Kind kind() const noexcept { return kind_; }

 private:
  Kind kind_;
};

/// Throws pare::Error(message) unless `condition` holds.
inline void require(bool condition, const std::string& message,
                    Error::Kind kind = Error::Kind::InvalidArgument) {
  if (!condition) throw Error(message, kind);
}

}  // namespace pare
