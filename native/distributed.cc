#include "distributed.h"

#include <algorithm>

#include "errors.h"

#ifdef SEMICAP_HAS_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef SEMICAP_HAS_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace semicap {

bool distributed_backend_available(const std::string& backend) {
#ifdef SEMICAP_HAS_GLOO
  if (backend == "gloo") return true;
#endif
#ifdef SEMICAP_HAS_NCCL
  if (backend == "nccl") return true;
#endif
  return false;
}

#ifdef SEMICAP_HAS_GLOO

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef SEMICAP_HAS_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
  template <class F>
  void run(const DistConfig& cfg, const char* what, F&& f) {
    try {
      f();
    } catch (const c10::Error& e) {
      fail("E_DISTRIBUTED", "rank " + std::to_string(cfg.rank) + ": " + what + " failed (a peer died, or none answered within " +
                                std::to_string(cfg.timeout_ms / 1000) + " s): " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      fail("E_DISTRIBUTED", "rank " + std::to_string(cfg.rank) + ": " + what + " failed: " + e.what());
    }
  }
  void wait(c10::intrusive_ptr<c10d::Work> w) { w->wait(); }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& t) {
#ifdef SEMICAP_HAS_NCCL
    if (nccl) return nccl->allreduce(t);
#endif
    return gloo->allreduce(t);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& t) {
#ifdef SEMICAP_HAS_NCCL
    if (nccl) return nccl->broadcast(t);
#endif
    return gloo->broadcast(t);
  }
};

Distributed::Distributed(const DistConfig& cfg) : cfg_(cfg), impl_(std::make_unique<Impl>()) {
  check(cfg.world >= 1 && cfg.rank >= 0 && cfg.rank < cfg.world, "E_CONFIG", "distributed: rank must lie in [0, worldSize)");
  check(cfg.port > 0 && cfg.port < 65536, "E_CONFIG", "distributed: masterPort must lie in [1, 65535]");
  check(distributed_backend_available(cfg.backend), "E_CONFIG", "distributed backend '" + cfg.backend + "' is not compiled into this build");
  const auto timeout = std::chrono::milliseconds(cfg.timeout_ms);
  impl_->run(cfg, "rendezvous", [&] {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(cfg.port);
    so.isServer = cfg.rank == 0;
    so.numWorkers = static_cast<std::size_t>(cfg.world);
    so.waitWorkers = true;
    so.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(cfg.addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(cfg.addr == "localhost" ? "127.0.0.1" : cfg.addr));
    impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(cfg.rank), static_cast<int>(cfg.world), opts);
#ifdef SEMICAP_HAS_NCCL
    if (cfg.backend == "nccl") {
      auto nopts = c10d::ProcessGroupNCCL::Options::create();
      nopts->timeout = timeout;
      impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, static_cast<int>(cfg.rank), static_cast<int>(cfg.world), nopts);
    }
#endif
  });
}

Distributed::~Distributed() = default;

void Distributed::broadcast(const std::vector<at::Tensor>& tensors) {
  c10::NoGradGuard no_grad;
  impl_->run(cfg_, "broadcast", [&] {
    for (const auto& t : tensors) {
      std::vector<at::Tensor> one{t.data()};
      impl_->wait(impl_->broadcast(one));
    }
  });
}

void Distributed::allreduce_sum(const std::vector<at::Tensor>& tensors) {
  c10::NoGradGuard no_grad;
  constexpr int64_t kBucket = 25 * 1000 * 1000 / 4;  // floats per bucket
  impl_->run(cfg_, "gradient all-reduce", [&] {
    size_t i = 0;
    while (i < tensors.size()) {
      std::vector<at::Tensor> group;
      int64_t n = 0;
      while (i < tensors.size() && (group.empty() || n + tensors[i].numel() <= kBucket)) {
        n += tensors[i].numel();
        group.push_back(tensors[i++]);
      }
      std::vector<at::Tensor> flat{at::cat([&] {
        std::vector<at::Tensor> v;
        for (auto& t : group) v.push_back(t.reshape({-1}));
        return v;
      }())};
      impl_->wait(impl_->allreduce(flat));
      int64_t off = 0;
      for (auto& t : group) {
        t.copy_(flat[0].narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    }
  });
}

double Distributed::allreduce_sum(double value) {
  at::Tensor t = at::full({1}, value, at::TensorOptions().dtype(at::kDouble));
#ifdef SEMICAP_HAS_NCCL
  if (impl_->nccl) t = t.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cfg_.cuda_index)));
#endif
  allreduce_sum(std::vector<at::Tensor>{t});
  return t.cpu().item<double>();
}

void Distributed::allreduce_sum(std::vector<double>& values) {
  if (values.empty()) return;
  at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble));
#ifdef SEMICAP_HAS_NCCL
  if (impl_->nccl) t = t.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cfg_.cuda_index)));
#endif
  allreduce_sum(std::vector<at::Tensor>{t});
  t = t.cpu().contiguous();
  std::copy(t.data_ptr<double>(), t.data_ptr<double>() + t.numel(), values.begin());
}

void Distributed::barrier() {
  impl_->run(cfg_, "barrier", [&] { impl_->wait(impl_->gloo->barrier()); });
}

#else  // no Gloo headers at build time

struct Distributed::Impl {};
Distributed::Distributed(const DistConfig& cfg) : cfg_(cfg) {
  fail("E_CONFIG", "distributed training is not compiled into this build (libtorch's c10d with Gloo headers was not found; on Debian: apt-get install libgloo-dev, then rebuild)");
}
Distributed::~Distributed() = default;
void Distributed::broadcast(const std::vector<at::Tensor>&) {}
void Distributed::allreduce_sum(const std::vector<at::Tensor>&) {}
double Distributed::allreduce_sum(double v) { return v; }
void Distributed::allreduce_sum(std::vector<double>&) {}
void Distributed::barrier() {}

#endif

double sum_over_ranks(Distributed* d, double local) { return d ? d->allreduce_sum(local) : local; }

void sum_over_ranks(Distributed* d, std::vector<double>& values) {
  if (d) d->allreduce_sum(values);
}

at::Tensor global_token_mean(Distributed* d, const at::Tensor& local_sum, double local_count) {
  return local_sum / std::max(1.0, sum_over_ranks(d, local_count));
}

void sum_gradients(Distributed* d, const std::vector<at::Tensor>& params) {
  if (!d) return;
  std::vector<at::Tensor> grads;
  for (const auto& t : params)
    if (t.grad().defined()) grads.push_back(t.grad());
  d->allreduce_sum(grads);
}

}  // namespace semicap
