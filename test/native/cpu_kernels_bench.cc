// Timing of native/cpu_kernels on the captioner's product shapes against OpenBLAS at one thread (dlopen'ed, so the
// build needs no BLAS headers): sgemv for one row, sgemm otherwise, with the weight as torch's Linear holds it
// ([N, K], "nk") and as GPT-2's Conv1D holds it ([K, N], "kn").
//   test/native/build.sh && test/native/out/cpu_kernels_bench [--all-isas] [--hot] [--cold-mb MB] [--filter SUBSTR] [--rows M] [--type T] [--budget S]
//     [--shape M,K,N]  (one shape of your own instead of the captioner's; repeatable)
// Times are the fastest of as many calls as fit in S seconds (default 0.4) of the thread's CPU time.
// Weights are cold by default: enough copies of each weight are rotated through that they never stay in the last
// level cache (decoding streams GPT-2's 500 MB of weights from memory); --hot reuses one copy.
#include "cpu_kernels.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <ctime>
#include <string>
#include <vector>

using namespace semicap::kernels;

namespace {

typedef void (*sgemm_t)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                        const int*, const float*, const int*, const float*, float*, const int*);
typedef void (*sgemv_t)(const char*, const int*, const int*, const float*, const float*, const int*, const float*,
                        const int*, const float*, float*, const int*);
sgemm_t blas_sgemm = nullptr;
sgemv_t blas_sgemv = nullptr;
std::string blas_name;

void load_blas() {
  setenv("OPENBLAS_NUM_THREADS", "1", 1);
  setenv("OMP_NUM_THREADS", "1", 1);
  for (const char* lib : {"/usr/lib/x86_64-linux-gnu/libblas.so.3", "libopenblas.so.0", "libblas.so.3"}) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    blas_sgemm = reinterpret_cast<sgemm_t>(dlsym(h, "sgemm_"));
    blas_sgemv = reinterpret_cast<sgemv_t>(dlsym(h, "sgemv_"));
    if (auto set = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"))) set(1);
    if (auto cfg = reinterpret_cast<char* (*)()>(dlsym(h, "openblas_get_config"))) blas_name = cfg();
    else blas_name = lib;
    if (blas_sgemm && blas_sgemv) return;
  }
  blas_sgemm = nullptr;
  blas_sgemv = nullptr;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// The calling thread's CPU time: time the scheduler gives to other processes on a shared machine is not counted
// (everything here runs on the calling thread: OpenBLAS at one thread too).
double cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Fastest seconds per call (the minimum: other processes on a shared machine only ever add time) of f(i) over reps; i rotates over the weight copies.
double g_budget_s = 0.4;
template <class F> double time_it(F f, int copies) {
  const double budget_s = g_budget_s;
  f(0);  // warm the code, page in
  std::vector<double> t;
  const double start = now_s();
  int i = 1;
  while ((now_s() - start < budget_s && t.size() < 2000) || t.size() < 5) {
    const double t0 = cpu_s();
    f(i % copies);
    t.push_back(cpu_s() - t0);
    ++i;
  }
  std::sort(t.begin(), t.end());
  return t[0];
}

struct Shape {
  const char* what;
  int64_t M, K, N;
};

bool g_hot = false;
// > the 32 MiB L3 of the machines measured, in at most 64 copies (a weight under 1.5 MiB rotates through less).
// --cold-mb 512: GPT-2's larger weights rotate through as much memory as decoding streams (on a VM with nested
// paging, products then run ~15% slower than at 96 MB, as they do inside a decoding step).
size_t g_cold_bytes = 96u << 20;

int copies_for(size_t bytes) {
  if (g_hot) return 1;
  return static_cast<int>(std::min<size_t>(64, std::max<size_t>(1, (g_cold_bytes + bytes - 1) / bytes)));
}

}  // namespace

int main(int argc, char** argv) {
  bool all_isas = false;
  std::string filter, only_type;  // --type float32|bfloat16|int8|int8dot: that weight type only
  int64_t only_rows = 0;          // --rows M: shapes of M rows only
  std::vector<Shape> own;         // --shape M,K,N: these shapes instead of the list below
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--all-isas")) all_isas = true;
    else if (!std::strcmp(argv[i], "--hot")) g_hot = true;
    else if (!std::strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
    else if (!std::strcmp(argv[i], "--budget") && i + 1 < argc) g_budget_s = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--cold-mb") && i + 1 < argc) {
      const long long mb = std::atoll(argv[++i]);
      if (mb < 1 || mb > 65536) {
        std::fprintf(stderr, "--cold-mb wants 1..65536, got %s\n", argv[i]);
        return 2;
      }
      g_cold_bytes = static_cast<size_t>(mb) << 20;
    }
    else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) only_rows = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--type") && i + 1 < argc) only_type = argv[++i];
    else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
      long m = 0, k = 0, n = 0;
      if (std::sscanf(argv[++i], "%ld,%ld,%ld", &m, &k, &n) != 3 || m < 1 || k < 1 || n < 1) {
        std::fprintf(stderr, "--shape wants M,K,N (positive), got %s\n", argv[i]);
        return 2;
      }
      own.push_back({"shape", m, k, n});
    }
  }
  load_blas();
  const Isa best = active_isa();
  std::printf("cpu_kernels bench: active ISA %s, weights %s; BLAS: %s\n", isa_name(best), g_hot ? "hot" : "cold",
              blas_sgemm ? blas_name.c_str() : "not found");
  const std::vector<Shape> listed = {
      {"gpt2 qkv", 1, 768, 2304},   {"gpt2 proj", 1, 768, 768},   {"gpt2 fc", 1, 768, 3072},
      {"gpt2 fc2", 1, 3072, 768},   {"logits", 1, 768, 50257},    {"mapper1", 1, 512, 3840},
      {"mapper2", 1, 3840, 7680},   {"gpt2 qkv", 8, 768, 2304},   {"gpt2 proj", 8, 768, 768},
      {"gpt2 fc", 8, 768, 3072},    {"gpt2 fc2", 8, 3072, 768},   {"logits", 8, 768, 50257},
      {"mapper1", 8, 512, 3840},    {"mapper2", 8, 3840, 7680},   {"gpt2 qkv", 16, 768, 2304},
      {"gpt2 proj", 16, 768, 768},  {"gpt2 fc", 16, 768, 3072},   {"gpt2 fc2", 16, 3072, 768},
      {"logits", 16, 768, 50257},   {"prefill fc", 32, 768, 3072}, {"logits", 2, 768, 50257},
      {"logits", 4, 768, 50257},
      {"clip qkv", 50, 768, 2304},  {"clip fc", 50, 768, 3072},   {"clip fc2", 50, 3072, 768},
      {"clip qkv", 400, 768, 2304}, {"clip proj", 400, 768, 768}, {"clip fc", 400, 768, 3072},
      {"clip fc2", 400, 3072, 768},
  };
  std::printf("%-11s %4s %5s %6s  %-8s %-8s %9s %7s %8s | %9s %9s %8s\n", "shape", "M", "K", "N", "type", "isa", "ms",
              "GB/s", "GFLOP/s", "blas nk", "blas kn", "vs blas");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (const Shape& s : own.empty() ? listed : own) {
    char label[64];
    std::snprintf(label, sizeof label, "%s %ld %ld %ld", s.what, (long)s.M, (long)s.K, (long)s.N);
    if (!filter.empty() && std::string(label).find(filter) == std::string::npos) continue;
    if (only_rows > 0 && s.M != only_rows) continue;
    const int64_t M = s.M, K = s.K, N = s.N;
    std::vector<float> w(static_cast<size_t>(N * K)), x(static_cast<size_t>(M * K)), y(static_cast<size_t>(M * N));
    for (auto& e : w) e = d(rng);
    for (auto& e : x) e = d(rng);
    const double flop = 2.0 * M * N * K;
    // OpenBLAS on rotated copies of the float32 weight in both layouts.
    double blas_nk = NAN, blas_kn = NAN;
    if (blas_sgemm) {
      const size_t wb = w.size() * 4;
      const int nc = copies_for(wb);
      std::vector<std::vector<float>> nk(nc, w), kn(nc);
      for (int c = 0; c < nc; ++c) {
        kn[c].resize(w.size());
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) kn[c][k * N + n] = w[n * K + k];
      }
      const int iM = M, iK = K, iN = N, one = 1;
      const float alpha = 1.f, beta = 0.f;
      if (M == 1) {
        blas_nk = time_it([&](int c) { blas_sgemv("T", &iK, &iN, &alpha, nk[c].data(), &iK, x.data(), &one, &beta, y.data(), &one); }, nc);
        blas_kn = time_it([&](int c) { blas_sgemv("N", &iN, &iK, &alpha, kn[c].data(), &iN, x.data(), &one, &beta, y.data(), &one); }, nc);
      } else {
        blas_nk = time_it([&](int c) { blas_sgemm("T", "N", &iN, &iM, &iK, &alpha, nk[c].data(), &iK, x.data(), &iK, &beta, y.data(), &iN); }, nc);
        blas_kn = time_it([&](int c) { blas_sgemm("N", "N", &iN, &iM, &iK, &alpha, kn[c].data(), &iN, x.data(), &iK, &beta, y.data(), &iN); }, nc);
      }
    }
    const double blas_best = std::min(blas_nk, blas_kn);
    for (int isa_i = static_cast<int>(best); isa_i >= 0; --isa_i) {
      const Isa isa = static_cast<Isa>(isa_i);
      if (!all_isas && isa != best) continue;
      // (int8 twice on avx512bf16: widened to float32, then through bf16 pairs, PackedWeight::i8_dot: "int8 dot")
      for (int v = 0; v < (isa == Isa::Avx512Bf16 ? 4 : 3); ++v) {
        const WType t = v == 0 ? WType::F32 : v == 1 ? WType::BF16 : WType::I8;
        if (!only_type.empty() && only_type != (v == 3 ? "int8dot" : wtype_name(t))) continue;
        auto first = pack(w.data(), N, K, false, K, t, isa);
        const int nc = copies_for(first->bytes());
        std::vector<std::unique_ptr<PackedWeight>> pws;
        pws.push_back(std::move(first));
        for (int c = 1; c < nc; ++c) pws.push_back(pack(w.data(), N, K, false, K, t, isa));
        for (auto& pw : pws) pw->i8_dot = v == 3;
        const double sec = time_it([&](int c) { gemm_packed(x.data(), M, K, *pws[c], nullptr, y.data(), N, 0, N); }, nc);
        std::printf("%-11s %4ld %5ld %6ld  %-8s %-8s %9.3f %7.1f %8.1f | %9.3f %9.3f %7.2fx\n", s.what, (long)M,
                    (long)K, (long)N, v == 3 ? "int8 dot" : wtype_name(t), isa_name(isa), sec * 1e3, pws[0]->bytes() / sec / 1e9,
                    flop / sec / 1e9, blas_nk * 1e3, blas_kn * 1e3, blas_best / sec);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
