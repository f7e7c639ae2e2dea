#pragma once
// The differences between the LibTorch lines pare builds against (Debian's
// 1.13 and the 2.x that ships with PyTorch), in one place. Internal: not
// installed, included by sources only.

#include <torch/version.h>

/// True when the LibTorch being compiled against is at least major.minor.
#define PARE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// c10::Allocator: from 2.3, allocate() is no longer const (an allocator changes
// its own state) and copy_data() is pure virtual (Allocator::clone copies with it).
#if PARE_TORCH_AT_LEAST(2, 3)
#define PARE_ALLOCATE_CONST
/// Declares the copy_data override 2.x requires: a plain memcpy, as c10's default.
#define PARE_ALLOCATOR_COPY_DATA                                            \
  void copy_data(void* dest, const void* src, std::size_t count) const override { \
    default_copy_data(dest, src, count);                                      \
  }
#else
#define PARE_ALLOCATE_CONST const
#define PARE_ALLOCATOR_COPY_DATA
#endif
