#include "prune/unpack_attention.hpp"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <optional>
#include <sstream>

#include "core/ivalue_walk.hpp"
#include "pare/core/compare.hpp"
#include "pare/core/error.hpp"

namespace pare::detail {
namespace {

using torch::jit::Module;

bool is_multihead_attention(const Module& module) {
  const auto name = module.type()->name();
  if (!name) return false;
  const auto& qualified = name->qualifiedName();
  return qualified.find("torch.nn.modules.activation") != std::string::npos && name->name() == "MultiheadAttention";
}

// The forward's parameters, in order; a forward spelled otherwise (a later
// PyTorch's) is left alone rather than guessed at.
const std::vector<std::string>& known_arguments() {
  static const std::vector<std::string> names{
      "query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal"};
  return names;
}

std::optional<std::string> why_kept(const Module& mha) {
  const auto& arguments = mha.get_method("forward").function().getSchema().arguments();
  if (arguments.size() < 8 || arguments.size() > 9) return "its forward takes an unknown signature";
  for (size_t i = 1; i < arguments.size(); ++i)
    if (arguments[i].name() != known_arguments()[i - 1]) return "its forward takes an unknown signature";
  if (!mha.hasattr("in_proj_weight") || !mha.attr("in_proj_weight").isTensor())
    return "separate q/k/v weights (kdim or vdim differ from embed_dim)";
  if (!mha.hasattr("in_proj_bias") || !mha.attr("in_proj_bias").isTensor()) return "no in_proj_bias (bias=False)";
  if (mha.hasattr("bias_k") && !mha.attr("bias_k").isNone()) return "add_bias_kv=True";
  if (mha.hasattr("add_zero_attn") && mha.attr("add_zero_attn").toBool()) return "add_zero_attn=True";
  if (!mha.hasattr("batch_first") || !mha.attr("batch_first").toBool())
    return "batch_first=False (sequence-first inputs)";
  if (!mha.hasattr("out_proj") || !mha.attr("out_proj").isModule()) return "no out_proj module";
  return std::nullopt;
}

std::string default_text(const c10::IValue& value) {
  if (value.isNone()) return "None";
  if (value.isBool()) return value.toBool() ? "True" : "False";
  if (value.isInt()) return std::to_string(value.toInt());
  throw Error("PruneChannels: nn.MultiheadAttention.forward has a default of type " + value.tagKind() +
                  "; this is a bug in pare",
              Error::Kind::Runtime);
}

// The forward, as the channel analysis follows hand-written attention:
// linears, view(b, t, heads, head_dim), transpose, matmul, softmax, merge.
std::string unpacked_forward(const Module& mha) {
  const auto& arguments = mha.get_method("forward").function().getSchema().arguments();
  std::ostringstream source;
  source << "def forward(self";
  for (size_t i = 1; i < arguments.size(); ++i) {
    source << ", " << arguments[i].name() << ": " << arguments[i].type()->annotation_str();
    if (arguments[i].default_value()) source << " = " << default_text(*arguments[i].default_value());
  }
  const double scale = std::sqrt(double(mha.attr("head_dim").toInt()));
  source << std::setprecision(17) << R"ts() -> Tuple[Tensor, Optional[Tensor]]:
    b = query.size(0)
    t = query.size(1)
    s = key.size(1)
    q = torch.linear(query, self.query_weight, self.query_bias).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
    k = torch.linear(key, self.key_weight, self.key_bias).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
    v = torch.linear(value, self.value_weight, self.value_bias).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / )ts"
         << scale << R"ts(
    if attn_mask is not None:
        assert attn_mask.dim() == 2, "this attention's heads were unpacked (pare): attn_mask must be 2-D"
        if attn_mask.is_floating_point():
            scores = scores + attn_mask
        else:
            scores = scores.masked_fill(attn_mask, float("-inf"))
    if key_padding_mask is not None:
        padding = key_padding_mask.view(b, 1, 1, s)
        if padding.is_floating_point():
            scores = scores + padding
        else:
            scores = scores.masked_fill(padding, float("-inf"))
    attention = torch.softmax(scores, -1)
    if self.training and self.dropout > 0.0:
        attention = torch.dropout(attention, self.dropout, True)
    merged = torch.matmul(attention, v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
    output = torch.linear(merged, self.out_proj.weight, self.out_proj.bias)
    if need_weights:
        if average_attn_weights:
            return output, attention.mean(1)
        return output, attention
    return output, None
)ts";
  return source.str();
}

// One instance: the packed projection split into three parameters, the packed ones removed.
void split_projection(Module& mha) {
  const auto weight = mha.attr("in_proj_weight").toTensor().detach();
  const auto bias = mha.attr("in_proj_bias").toTensor().detach();
  const bool grad = mha.attr("in_proj_weight").toTensor().requires_grad();
  const auto weights = weight.chunk(3, 0);
  const auto biases = bias.chunk(3, 0);
  const char* names[] = {"query", "key", "value"};
  for (size_t i = 0; i < 3; ++i) {
    mha.register_parameter(std::string(names[i]) + "_weight", weights[i].clone().set_requires_grad(grad), false);
    mha.register_parameter(std::string(names[i]) + "_bias", biases[i].clone().set_requires_grad(grad), false);
  }
  // The type keeps both until every instance has dropped them: the slot
  // numbers come from it, so the later slot goes first.
  const auto type = mha.type();
  const size_t slots[] = {type->getAttributeSlot("in_proj_weight"), type->getAttributeSlot("in_proj_bias")};
  mha._ivalue()->unsafeRemoveSlot(std::max(slots[0], slots[1]));
  mha._ivalue()->unsafeRemoveSlot(std::min(slots[0], slots[1]));
}

void unpack_type(std::vector<Module>& instances) {
  const auto type = instances.front().type();
  const std::string source = unpacked_forward(instances.front());
  const auto qualified = type->getMethod("forward").qualname();
  for (auto& mha : instances) split_projection(mha);
  type->unsafeRemoveAttribute("in_proj_weight");
  type->unsafeRemoveAttribute("in_proj_bias");
  type->unsafeRemoveMethod("forward");
  type->compilation_unit()->unsafeRemoveMethod(qualified);
  try {
    instances.front().define(source);
  } catch (const std::exception& e) {
    throw Error(std::string("PruneChannels: could not write nn.MultiheadAttention out for head removal; this is a "
                            "bug in pare: ") +
                    e.what(),
                Error::Kind::Runtime);
  }
}

c10::IValue output_of(Module module, const std::vector<c10::IValue>& inputs) {
  torch::NoGradGuard no_grad;
  return module.forward(inputs);
}

// The written-out attention must compute what the packed one did: checked on
// the example inputs, so a PyTorch whose module differs fails here, clearly.
void check_same_outputs(const c10::IValue& before, const c10::IValue& after) {
  double scale = 1.0;
  for_each_tensor(before, [&](const at::Tensor& t) {
    if (t.numel() > 0) scale = std::max(scale, t.abs().max().item<double>());
  });
  require(max_abs_diff(before, after) <= 1e-4 * scale,
          "PruneChannels: nn.MultiheadAttention written out for head removal computes other outputs than the "
          "original on the example inputs; this is a bug in pare (heads(0) keeps attention as it is)",
          Error::Kind::Runtime);
}

// A report row for an attention left whole: its inner width, in heads of head_dim channels.
ChannelGroupReport kept_whole(const std::string& path, const Module& mha, const std::string& reason) {
  ChannelGroupReport row;
  row.name = path;
  row.members = {path};
  // A traced module keeps parameters only: its width is out_proj's, its head size unknown (0).
  const auto int_attr = [&](const char* name) { return mha.hasattr(name) ? mha.attr(name).toInt() : int64_t(0); };
  const bool has_out = mha.hasattr("out_proj") && mha.attr("out_proj").isModule();
  row.channels_before = row.channels_after =
      has_out ? mha.attr("out_proj").toModule().attr("weight").toTensor().size(0) : int_attr("embed_dim");
  row.head_size = int_attr("head_dim");
  row.blocked_by = "nn.MultiheadAttention: " + reason;
  return row;
}

}  // namespace

std::vector<ChannelGroupReport> unpack_multihead_attention(torch::jit::Module& module,
                                                           const std::vector<c10::IValue>& inputs) {
  // Instances of one class type share its methods: a type is rewritten only
  // if all of them can be. Types in the order their first instance appears.
  std::vector<std::vector<std::pair<std::string, Module>>> by_type;
  std::map<const c10::ClassType*, size_t> index;
  for (const auto& item : module.named_modules()) {
    if (!is_multihead_attention(item.value)) continue;
    const auto at = index.emplace(item.value.type().get(), by_type.size()).first->second;
    if (at == by_type.size()) by_type.emplace_back();
    by_type[at].emplace_back(item.name, item.value);
  }
  std::vector<ChannelGroupReport> kept;
  c10::IValue before;
  bool unpacked = false;
  for (auto& named : by_type) {
    std::optional<std::string> reason;
    for (const auto& [path, mha] : named)
      if (!reason) reason = why_kept(mha);
    if (reason) {
      for (const auto& [path, mha] : named) kept.push_back(kept_whole(path, mha, *reason));
      continue;
    }
    if (!unpacked) before = output_of(module.clone(), inputs);  // a copy runs, never `module` itself
    std::vector<Module> instances;
    instances.reserve(named.size());
    for (const auto& [path, mha] : named) instances.push_back(mha);
    unpack_type(instances);
    unpacked = true;
  }
  if (unpacked) check_same_outputs(before, output_of(module.clone(), inputs));
  return kept;
}

}  // namespace pare::detail
