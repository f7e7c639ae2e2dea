// pare::model_fingerprint: the module's TorchScript archive, streamed through
// XXH3-128 instead of into a file. The archive is what defines the model for
// every loader (code, constants, tensors), and its writer is deterministic.

#include "pare/fingerprint.hpp"

#include <streambuf>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include "pare/cache.hpp"
#include "pare/error.hpp"

namespace pare {
namespace {

// An output stream buffer that hashes what is written and keeps none of it.
class HashingBuffer : public std::streambuf {
 public:
  HashingBuffer() { XXH3_128bits_reset(&state_); }
  Hash128 digest() const {
    const auto h = XXH3_128bits_digest(&state_);
    return {h.low64, h.high64};
  }

 protected:
  std::streamsize xsputn(const char* data, std::streamsize n) override {
    if (n > 0) XXH3_128bits_update(&state_, data, static_cast<size_t>(n));
    return n;
  }
  int_type overflow(int_type c) override {
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    const char byte = traits_type::to_char_type(c);
    XXH3_128bits_update(&state_, &byte, 1);
    return c;
  }

 private:
  XXH3_state_t state_;
};

}  // namespace

std::string model_fingerprint(const torch::jit::Module& module) {
  HashingBuffer buffer;
  std::ostream out(&buffer);
  try {
    module.save(out);
  } catch (const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    const std::string reason = c10_error ? c10_error->what_without_backtrace() : e.what();
    throw Error("model_fingerprint: the module can't be serialized, so it has no fingerprint (" +
                    reason.substr(0, reason.find('\n')) +
                    "); name the model yourself instead (RunnerOptions::cache_namespace)",
                Error::Kind::Runtime);
  }
  require(out.good(), "model_fingerprint: writing the module failed", Error::Kind::Runtime);
  return buffer.digest().hex();
}

}  // namespace pare
