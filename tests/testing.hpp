#pragma once
// Include this instead of <catch2/catch.hpp> in tests that use LibTorch: the
// Debian LibTorch is built with glog, whose CHECK macro would silently replace
// Catch's (aborting instead of reporting). LibTorch first, then Catch's CHECK wins.

#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>
