#pragma once
// Include this instead of <catch2/catch.hpp> in tests that use LibTorch: the
// Debian LibTorch is built with glog, whose CHECK macro would silently replace
// Catch's (aborting instead of reporting). LibTorch first, then Catch's CHECK wins.

#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <ftw.h>

#include <cstdio>
#include <string>

/// How often `what` occurs in `text` (non-overlapping), e.g. an op in a printed graph.
inline size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

/// The printed graph of a module's forward method.
inline std::string graph_of(const torch::jit::Module& m) { return m.get_method("forward").graph()->toString(); }

/// A 1 x width tensor filled with `value`: one request row.
inline torch::Tensor row(float value, int64_t width = 4) { return torch::full({1, width}, value); }

/// Removes a directory tree. Not std::filesystem::remove_all: pip's LibTorch 2.x
/// exports a broken copy of it that the dynamic linker can bind first.
inline void remove_tree(const std::string& path) {
  nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
       FTW_DEPTH | FTW_PHYS);
}
