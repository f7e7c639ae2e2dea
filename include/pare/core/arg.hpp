#pragma once
// PARE_ARG — one line declares an option of an options class: the chainable
// setter, the getter of the same name and the stored field, in the spirit of
// LibTorch's TORCH_ARG (torch/arg.h).
//
//   class FooOptions {
//    public:
//     explicit FooOptions(double amount) : amount_(amount) {}
//     /// Fraction of weights to remove, in [0, 1].
//     PARE_ARG(double, amount);
//     /// Channels are rounded up to a multiple of this.
//     PARE_ARG(int64_t, round_to) = 1;   // the default follows the macro
//   };
//
//   FooOptions(0.5).round_to(8).amount();  // setter chains; getter reads
//
// PARE_ARG(T, name) declares
//   - `X& name(T value)`: stores `value` and returns `*this` (chainable);
//   - `const T& name() const`: the stored value;
//   - `T name_`: the private field, which the constructor may initialize;
//   - `using name_arg_type = T`: a public marker that the option is declared
//     through PARE_ARG (tests/test_api_rules.cpp checks it for every option).
// The macro ends in `private:`: declare further public members after a new
// `public:`. A type with a comma in it needs an alias (`using Map = ...`).
// PARE_ARG_NOTED(T, name, key) is PARE_ARG whose setter also calls
// `this->note_set(key)`, for a class that records which options were set
// explicitly (RunnerOptions::explicitly_set).
// Setters store; the pass validates its options in its constructor, so every
// setter of every options class behaves the same.

#include <utility>

// The macros keep their hand-aligned line continuations.
// clang-format off
// PARE_ARG and PARE_ARG_NOTED differ only in what the setter does after storing.
#define PARE_ARG_WITH(T, name, after_store)                           \
 public:                                                              \
  using name##_arg_type = T;                                          \
  auto name(T new_##name)->decltype(*this) { /* NOLINT */             \
    this->name##_ = std::move(new_##name);                            \
    after_store;                                                      \
    return *this;                                                     \
  }                                                                   \
  const T& name() const noexcept { /* NOLINT */                       \
    return this->name##_;                                             \
  }                                                                   \
                                                                      \
 private:                                                             \
  T name##_ /* NOLINT */

#define PARE_ARG(T, name) PARE_ARG_WITH(T, name, (void)0)
#define PARE_ARG_NOTED(T, name, key) PARE_ARG_WITH(T, name, this->note_set(key))
