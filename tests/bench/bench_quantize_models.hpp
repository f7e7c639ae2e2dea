#pragma once
// bench_quantize's table of torchvision models (and a small trained ResNet)
// against PyTorch FX graph-mode PTQ; see bench_quantize_models.cpp.

#include <string>
#include <vector>

/// Prepares the models in `dir` (through bench_quantize_models.py), quantizes
/// them with pare on `engine`, and prints the table the script measures.
void print_model_table(const std::string& dir, const std::vector<std::string>& models, const std::string& engine,
                       int threads, int rounds);
/// Trains (and caches in `dir`) the Fashion-MNIST CNN, gives its first layer
/// outlier channels, and prints plain int8 beside QuantizeInt8's max_drop.
void print_max_drop_table(const std::string& dir, int epochs);
