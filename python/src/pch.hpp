// The precompiled header of the Python extension: LibTorch's Python headers and
// pybind11, which every binding source includes.
#pragma once
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
