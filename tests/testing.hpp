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

/// Removes a directory tree. Not std::filesystem::remove_all: pip's LibTorch 2.x
/// exports a broken copy of it that the dynamic linker can bind first.
inline void remove_tree(const std::string& path) {
  nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
       FTW_DEPTH | FTW_PHYS);
}
