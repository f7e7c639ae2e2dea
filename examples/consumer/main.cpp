// Prunes a small scripted model with an installed pare and prints the report.
#include <iostream>

#include <pare/pare.hpp>

int main() try {
  torch::jit::Module model("__torch__.consumer.Net");
  torch::jit::Module linear("__torch__.torch.nn.modules.linear.Linear");
  linear.register_parameter("weight", torch::randn({16, 32}), false);
  linear.register_parameter("bias", torch::zeros({16}), false);
  linear.define("def forward(self, x):\n  return torch.linear(x, self.weight, self.bias)\n");
  model.register_module("fc", linear);
  model.define("def forward(self, x):\n  return self.fc.forward(x)\n");

  const auto result = pare::Pipeline().add(pare::L1Prune(pare::L1PruneOptions(0.75))).run(model);
  std::cout << result.report.to_string();
  const auto& entry = result.report.at("l1_prune");
  return entry.total_nonzeros() == 16 * 32 / 4 ? 0 : 1;
} catch (const pare::Error& e) {
  std::cerr << "pare error: " << e.what() << "\n";
  return 1;
}
