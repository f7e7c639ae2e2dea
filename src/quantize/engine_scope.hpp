#pragma once
// The process's quantized engine (at::globalContext().qEngine()) is global
// state: pare switches it only for the duration of a pass and puts the
// caller's engine back however the pass ends.

#include <string>

#include <ATen/Context.h>

#include "pare/quantize/quantize.hpp"

namespace pare::detail {

class EngineScope {
 public:
  /// Switches to `engine` (empty: the best this LibTorch has); pare::Error
  /// naming `pass` and the available engines if there is none.
  EngineScope(const std::string& engine, const std::string& pass) : previous_(at::globalContext().qEngine()) {
    const auto engines = available_quantized_engines();
    require(!engines.empty(), pass + ": this LibTorch has no quantized engine", Error::Kind::Runtime);
    engine_ = engine.empty() ? engines.front() : engine;
    set_quantized_engine(engine_);
  }
  ~EngineScope() { at::globalContext().setQEngine(previous_); }
  EngineScope(const EngineScope&) = delete;
  EngineScope& operator=(const EngineScope&) = delete;

  const std::string& engine() const { return engine_; }

 private:
  at::QEngine previous_;
  std::string engine_;
};

}  // namespace pare::detail
