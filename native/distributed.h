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
  void barrier();

 private:
  struct Impl;
  DistConfig cfg_;
  std::unique_ptr<Impl> impl_;
};

bool distributed_backend_available(const std::string& backend);

}  // namespace semicap
