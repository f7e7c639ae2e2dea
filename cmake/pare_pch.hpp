// The precompiled header of every pare target: the LibTorch headers that
// nearly every source includes. Parsing them is most of a source's compile
// time, so they are parsed once per build.
#pragma once
#include <torch/script.h>
#include <torch/csrc/jit/ir/ir.h>
#include <nlohmann/json.hpp>
