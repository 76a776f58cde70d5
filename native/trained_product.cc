// Products with autograd on (training) on the CPU: the forward through the layer's packed copy and the kernels of
// cpu_kernels.h, the gradients through BLAS (but weight gradients over a few rows, summed as outer products).
//
// Why: the forward products of a caption batch (230-1200 rows, K 768-3072) ran through OpenBLAS at 80-105 GFLOP/s
// at two threads on a Zen 3 VM; the kernels run them faster, and the packed copies are there already: made at load
// and, for a weight being trained, laid out again in place after each optimizer step (SCST samples through them
// anyway). The backward stays with BLAS: routing it through the kernels too needed a second copy laid out the other
// way round, renewed every step, and measured no faster overall (see README, training).
// Every product in grad mode takes this path, weights being trained or not: SCST's KL reference (frozen) must
// compute exactly what the policy computes, so that the KL of identical models is 0.
#include <torch/csrc/autograd/custom_function.h>

#include "packed.h"

namespace semicap {
namespace {

at::Tensor no_blas() { throw std::logic_error("trained_product: the forward takes the kernels"); }

// Rows up to which a weight gradient is summed as outer products (outer_sum) instead of a BLAS product.
constexpr int64_t kFewRows = 16;

// out[i, j] = sum over r of a[r, i] * b[r, j] (a [M, I], b [M, J], float32 CPU): a weight gradient over few rows
// (the mapper's: one row per image), written once, row by row (a row of out stays in L1 over the M passes), rows
// shared between threads. OpenBLAS ran the mapper's [7680 x 8]^T [8 x 3840] at 4-7 GFLOP/s (65-117 ms a step on a
// Zen 3 VM), for a result that is bound by writing its 118 MB.
at::Tensor outer_sum(const at::Tensor& a_in, const at::Tensor& b_in) {
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t M = a.size(0), I = a.size(1), J = b.size(1);
  at::Tensor out = at::empty({I, J}, a.options());
  const float* ap = a.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* op = out.data_ptr<float>();
  share_work(I, I * J * M, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* row = op + i * J;
      const float c0 = ap[i];
      for (int64_t j = 0; j < J; ++j) row[j] = c0 * bp[j];
      for (int64_t r = 1; r < M; ++r) {
        const float c = ap[r * I + i];
        const float* br = bp + r * J;
        for (int64_t j = 0; j < J; ++j) row[j] += c * br[j];
      }
    }
  });
  return out;
}

struct TrainedProduct : torch::autograd::Function<TrainedProduct> {
  // slot: the layer's; its weight is [K, N] (Conv1D, y = x w + b) or [N, K] (Linear, y = x w^T + b). An empty b
  // stands for no bias (autograd's inputs must be defined tensors).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, int64_t slot_address) {
    auto* slot = reinterpret_cast<PackedSlot*>(slot_address);
    const bool has_bias = b.numel() > 0;
    ctx->saved_data["kn"] = slot->w_is_kn();
    ctx->saved_data["bias"] = has_bias;
    ctx->save_for_backward({x, w});
    if (ProductTape* tape = ProductTape::replaying()) {  // the sampled decoding computed this output already
      at::Tensor y = tape->replay(slot, x, slot->w_is_kn() ? w.size(1) : w.size(0));
      if (y.defined()) return y;
    }
    PoolRestAfterJobs rest;  // the kernels' helpers must not hold a CPU through libtorch's work between products
    return packed_product(x, w, has_bias ? b : at::Tensor(), *slot, no_blas, kernels::Act::None, /*kernels_only=*/true);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const bool kn = ctx->saved_data["kn"].toBool();
    PoolRestAfterJobs rest;
    const int64_t K = x.size(-1);
    const at::Tensor& g = grads[0];
    const int64_t N = g.size(-1);
    const at::Tensor g2 = g.reshape({-1, N}), x2 = x.reshape({-1, K});
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = (kn ? at::mm(g2, w.t()) : at::mm(g2, w)).view(x.sizes());
    if (ctx->needs_input_grad(1)) {
      if (g2.size(0) <= kFewRows)  // (float32: trained_usable's operands, and g is their product's gradient)
        gw = kn ? outer_sum(x2, g2) : outer_sum(g2, x2);
      else
        gw = kn ? at::mm(x2.t(), g2) : at::mm(g2.t(), x2);
    }
    if (ctx->needs_input_grad(2) && ctx->saved_data["bias"].toBool()) gb = g2.sum(0);
    return {gx, gw, gb, at::Tensor()};
  }
};

}  // namespace

at::Tensor trained_product(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, PackedSlot& slot) {
  return TrainedProduct::apply(x, w, bias.defined() ? bias : at::empty({0}, w.options()), reinterpret_cast<int64_t>(&slot));
}

}  // namespace semicap
