// pare::model_fingerprint: XXH3-128 over a canonical form of the module —
// the code TorchScript would serialize for it (and its constant tensors),
// then every attribute of every submodule by name (parameters, buffers,
// numbers, strings, containers; packed int8 weights through __getstate__).
//
// Not the saved archive's bytes: those also hold source locations and depend
// on the order in which attributes were added, so a module and its save/load
// copy would differ.

#include "pare/cache/fingerprint.hpp"

#include <algorithm>

#include <torch/csrc/jit/serialization/python_print.h>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include "pare/cache/cache.hpp"
#include "pare/core/error.hpp"
#include "core/ivalue_walk.hpp"

namespace pare {
namespace {

constexpr int kMaxAttributeDepth = 64;

class Fingerprinter {
 public:
  Fingerprinter() { XXH3_128bits_reset(&state_); }
  Hash128 digest() const {
    const auto h = XXH3_128bits_digest(&state_);
    return {h.low64, h.high64};
  }

  void bytes(const void* data, size_t n) {
    if (n) XXH3_128bits_update(&state_, data, n);
  }
  template <class T>
  void pod(T value) { bytes(&value, sizeof value); }
  void text(const std::string& s) { pod<uint64_t>(s.size()); bytes(s.data(), s.size()); }

  void code(const torch::jit::Module& module) {
    torch::jit::ExtraFilesMap sources;
    std::vector<c10::IValue> constants;
    torch::jit::jitModuleToPythonCodeAndConstants(module, &sources, &constants);
    std::vector<std::pair<std::string, std::string>> files(sources.begin(), sources.end());
    std::sort(files.begin(), files.end());
    pod<uint64_t>(files.size());
    for (const auto& [name, source] : files) text(name), text(source);
    pod<uint64_t>(constants.size());
    for (const auto& constant : constants) value(constant);
  }

  void value(const c10::IValue& v) { detail::visit(v, *this, detail::DictKeys::Walk); }

  // The walk's callbacks: every value hashes its type's name first (value_header);
  // a container then its size and its children (a dict's keys and values), one level deeper.
  void enter(const c10::IValue& v, detail::Container, size_t size) {
    value_header(v);
    pod<uint64_t>(size);
    ++depth_;
  }
  void leave(const c10::IValue&, detail::Container) { --depth_; }
  void leaf(const c10::IValue& v);

 private:
  void value_header(const c10::IValue& v);
  void tensor(const at::Tensor& t);
  void object(const c10::intrusive_ptr<c10::ivalue::Object>& object);

  XXH3_state_t state_;
  int depth_ = 0;
};

void Fingerprinter::tensor(const at::Tensor& t) {
  pod<uint8_t>(t.defined());
  if (!t.defined()) return;
  pod<int32_t>(static_cast<int32_t>(t.scalar_type()));
  pod<uint8_t>(t.requires_grad());
  pod<uint64_t>(t.dim());
  for (auto size : t.sizes()) pod<int64_t>(size);
  at::Tensor values = t;
  if (t.is_quantized()) {
    pod<int32_t>(static_cast<int32_t>(t.qscheme()));
    if (t.qscheme() == at::kPerTensorAffine) {
      pod<double>(t.q_scale());
      pod<int64_t>(t.q_zero_point());
    } else {
      pod<int64_t>(t.q_per_channel_axis());
      tensor(t.q_per_channel_scales());
      tensor(t.q_per_channel_zero_points());
    }
    values = t.int_repr();
  }
  if (values.is_sparse() || values.is_mkldnn()) values = values.to_dense();
  values = values.cpu().contiguous();
  bytes(values.data_ptr(), values.numel() * values.element_size());
}

void Fingerprinter::object(const c10::intrusive_ptr<c10::ivalue::Object>& object) {
  const auto type = object->type();
  ++depth_;  // its state or attributes: one level deeper
  if (auto* getstate = type->findMethod("__getstate__")) {  // custom classes: packed weights
    pod<uint8_t>(1);
    value((*getstate)({c10::IValue(object)}));
  } else {
    pod<uint8_t>(0);
    std::vector<std::pair<std::string, size_t>> slots;  // by name: independent of the order they were added in
    for (size_t slot = 0; slot < type->numAttributes(); ++slot) slots.emplace_back(type->getAttributeName(slot), slot);
    std::sort(slots.begin(), slots.end());
    pod<uint64_t>(slots.size());
    for (const auto& [name, slot] : slots) text(name), value(object->getSlot(slot));
  }
  --depth_;
}

void Fingerprinter::value_header(const c10::IValue& v) {
  require(depth_ < kMaxAttributeDepth, "model_fingerprint: attributes nested deeper than " + std::to_string(kMaxAttributeDepth),
          Error::Kind::Runtime);
  text(v.tagKind());
}

void Fingerprinter::leaf(const c10::IValue& v) {
  value_header(v);
  if (v.isTensor()) return tensor(v.toTensor());
  if (v.isBool()) return pod<uint8_t>(v.toBool());
  if (v.isInt()) return pod<int64_t>(v.toInt());
  if (v.isDouble()) return pod<double>(v.toDouble());
  if (v.isString()) return text(v.toStringRef());
  if (v.isObject()) return object(v.toObject());
  if (!v.isNone()) text(v.type()->str());  // devices, dtypes, ...: their printed form
}

}  // namespace

std::string model_fingerprint(const torch::jit::Module& module) {
  Fingerprinter fingerprinter;
  try {
    fingerprinter.code(module);
    fingerprinter.value(module._ivalue());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    const std::string reason = c10_error ? c10_error->what_without_backtrace() : e.what();
    throw Error("model_fingerprint: the module can't be fingerprinted (" + reason.substr(0, reason.find('\n')) +
                    "); name the model yourself instead (RunnerOptions::cache_namespace)",
                Error::Kind::Runtime);
  }
  return fingerprinter.digest().hex();
}

}  // namespace pare
