// Data-parallel training on libtorch's own distributed engine (c10d): a TCPStore for rendezvous and a Gloo
// (CPU) or NCCL (CUDA) process group. Compiled in when the libtorch and its headers have them (SEMICAP_HAS_GLOO /
// SEMICAP_HAS_NCCL); otherwise asking for it is a clear error. Torch-light header: no c10d types leak out.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace semicap {

struct DistConfig {
  int64_t rank = 0, world = 1;
  std::string addr = "127.0.0.1", backend = "gloo";
  int64_t port = 29500, timeout_ms = 60000;
  int64_t cuda_index = 0;  // NCCL: this rank's GPU (the trainer sets it from the model's device)
  bool enabled() const { return world > 1; }
};

class Distributed {
 public:
  explicit Distributed(const DistConfig& cfg);
  ~Distributed();
  int64_t rank() const { return cfg_.rank; }
  int64_t world() const { return cfg_.world; }
  // Copies rank 0's tensors into everyone's.
  void broadcast(const std::vector<at::Tensor>& tensors);
  // Sums tensors (in place) over ranks, in flat buckets of about 25 MB.
  void allreduce_sum(const std::vector<at::Tensor>& tensors);
  double allreduce_sum(double value);
  // Sums every value over ranks in one all-reduce.
  void allreduce_sum(std::vector<double>& values);
  void barrier();

 private:
  struct Impl;
  DistConfig cfg_;
  std::unique_ptr<Impl> impl_;
};

bool distributed_backend_available(const std::string& backend);

// Data-parallel normalisation, the one home of "what one process with the whole global batch computes". Each
// rank holds its slice of the global batch; `d` is null for a single process (then every function is the identity).
// Losses are normalised by global counts, so that summing gradients over ranks gives the single-process gradient.
double sum_over_ranks(Distributed* d, double local);
void sum_over_ranks(Distributed* d, std::vector<double>& values);
// local_sum / max(1, local_count summed over ranks): a per-token mean over the global batch, as this rank's share.
at::Tensor global_token_mean(Distributed* d, const at::Tensor& local_sum, double local_count);
// Sums the parameters' gradients over ranks (those defined).
void sum_gradients(Distributed* d, const std::vector<at::Tensor>& params);

}  // namespace semicap
