// Tests of native/cpu_kernels against a double-precision reference, for every ISA this CPU runs. Exit code 0 when
// all pass. Build and run: test/native/build.sh && test/native/out/cpu_kernels_test
#include "cpu_kernels.h"

#include "check.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace semicap::kernels;

namespace {

using semicap_test::g_checks;
using semicap_test::g_failures;

std::mt19937 rng(12345);
std::vector<float> randv(size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  return v;
}

std::vector<Isa> runnable_isas() {
  std::vector<Isa> v;
  const Isa best = choose_isa(cpu_features(), nullptr);
  for (int i = 0; i <= static_cast<int>(best); ++i) v.push_back(static_cast<Isa>(i));
  return v;
}

struct Case {
  int64_t N, K, rows;
  bool kn;
  int64_t ldw_pad, ldx_pad, ldy_pad;
  bool bias;
  int64_t n_begin_panels;  // n_begin = this many panels
  int64_t n_end;           // -1: N
};

// v rounded to the nearest bfloat16 (ties to even), as float.
float round_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7FFFu + ((u >> 16) & 1);
  u &= 0xFFFF0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// The epilogue activations in double precision.
double act_ref(double v, Act act) {
  if (act == Act::QuickGelu) return v / (1.0 + std::exp(-1.702 * v));
  if (act == Act::GeluTanh) return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
  return v;
}

// One product checked against the double-precision reference over unpack()'s weights.
void run_case(Isa isa, WType t, const Case& c, Act act = Act::None, bool i8_dot = false) {
  const int64_t ldw = (c.kn ? c.N : c.K) + c.ldw_pad;
  std::vector<float> w = randv(static_cast<size_t>((c.kn ? c.K : c.N) * ldw));
  auto pw = pack(w.data(), c.N, c.K, c.kn, ldw, t, isa);
  pw->i8_dot = i8_dot;
  CHECK(pw->isa == isa && pw->type == t && pw->N == c.N && pw->K == c.K, "header");
  CHECK(reinterpret_cast<uintptr_t>(pw->data) % 64 == 0, "alignment");
  std::vector<float> wu(static_cast<size_t>(c.N * c.K));
  unpack(*pw, wu.data());
  // Dequantisation error against the original weights.
  double worst = 0;
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k) {
      const float orig = c.kn ? w[k * ldw + n] : w[n * ldw + k];
      const float got = wu[n * c.K + k];
      if (t == WType::F32) {
        if (got != orig) worst = 1e30;
      } else if (t == WType::BF16) {
        const double rel = std::fabs(double(got) - orig) / std::max(1e-30, std::fabs(double(orig)));
        if (rel > worst) worst = rel;
      } else {
        const double err = std::fabs(double(got) - orig) / pw->scale[n];
        if (err > worst) worst = err;
      }
    }
  if (t == WType::F32) CHECK(worst == 0, "float32 unpack differs");
  if (t == WType::BF16) CHECK(worst <= std::ldexp(1.0, -8), "bf16 rel err %g", worst);
  if (t == WType::I8) CHECK(worst <= 0.5 + 1e-4, "int8 err %g scales", worst);

  const int64_t P = pw->panel;
  const int64_t n_begin = c.n_begin_panels * P;
  const int64_t n_end = c.n_end < 0 ? c.N : c.n_end;
  const int64_t ldx = c.K + c.ldx_pad, ldy = c.N + c.ldy_pad;
  std::vector<float> x = randv(static_cast<size_t>(c.rows * ldx));
  std::vector<float> bias = randv(static_cast<size_t>(c.N));
  const float sentinel = 12345.f;
  std::vector<float> y(static_cast<size_t>(c.rows * ldy), sentinel);
  // bf16 weights on avx512bf16 multiply x rounded to bf16 (VDPBF16PS): the reference rounds it the same way.
  const bool dot_bf16 = isa == Isa::Avx512Bf16 && (t == WType::BF16 || (t == WType::I8 && i8_dot));
  gemm_packed(x.data(), c.rows, ldx, *pw, c.bias ? bias.data() : nullptr, y.data(), ldy, n_begin, n_end, act);
  int bad = 0;
  for (int64_t m = 0; m < c.rows; ++m)
    for (int64_t n = 0; n < ldy; ++n) {
      const float got = y[m * ldy + n];
      if (n < n_begin || n >= n_end) {
        if (got != sentinel && bad++ < 3) CHECK(false, "wrote outside the range at m %ld n %ld", (long)m, (long)n);
        continue;
      }
      double ref = c.bias ? bias[n] : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < c.K; ++k) {
        const double term = double(dot_bf16 ? round_bf16(x[m * ldx + k]) : x[m * ldx + k]) * wu[n * c.K + k];
        ref += term;
        mag += std::fabs(term);
      }
      // The activations' slopes stay under 1.2; their own error is a few ulps of the result.
      const double want = act_ref(ref, act);
      const double err = std::fabs(got - want);
      if (!(err <= 1.2e-5 * mag + 1e-6 * std::fabs(want) + 1e-30) && bad++ < 3)
        CHECK(false, "%s %s act %d N %ld K %ld rows %ld kn %d: y[%ld,%ld] = %.9g, want %.9g (err %g, mag %g)",
              isa_name(isa), wtype_name(t), (int)act, (long)c.N, (long)c.K, (long)c.rows, (int)c.kn, (long)m, (long)n,
              got, want, err, mag);
    }
  ++g_checks;
  if (bad) ++g_failures;

  // The same product over rows packed once (three parts, the last first, as threads may) and its panels in two
  // ranges, as split products run it: bitwise the same y.
  const int64_t xs_floats = packed_rows_floats(c.rows, c.K);
  std::unique_ptr<float, decltype(&std::free)> xs(
      static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(xs_floats + 16) * sizeof(float))), &std::free);
  const float guard = -7777.f;  // nothing is written past the rows' rows * K floats
  for (int64_t i = c.rows * c.K; i < xs_floats + 16; ++i) xs.get()[i] = guard;
  const int64_t block = rows_per_block(*pw, c.rows);
  for (int part = 2; part >= 0; --part) pack_rows(x.data(), c.rows, ldx, *pw, block, xs.get(), part, 3);
  bool kept = true;
  for (int64_t i = c.rows * c.K; i < xs_floats + 16; ++i) kept = kept && xs.get()[i] == guard;
  CHECK(kept, "%s %s K %ld rows %ld: pack_rows wrote past its rows", isa_name(isa), wtype_name(t), (long)c.K,
        (long)c.rows);
  std::vector<float> y2(static_cast<size_t>(c.rows * ldy), sentinel);
  const int64_t mid = std::min(n_end, n_begin + ((n_end - n_begin) / P / 2) * P);
  gemm_packed_rows(xs.get(), c.rows, block, *pw, c.bias ? bias.data() : nullptr, y2.data(), ldy, n_begin, mid, act);
  gemm_packed_rows(xs.get(), c.rows, block, *pw, c.bias ? bias.data() : nullptr, y2.data(), ldy, mid, n_end, act);
  CHECK(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)) == 0,
        "%s %s N %ld K %ld rows %ld: packed rows differ from gemm_packed", isa_name(isa), wtype_name(t), (long)c.N,
        (long)c.K, (long)c.rows);
  // And in groups of whole blocks, each packed and multiplied on its own (as split products with many rows run).
  if (c.rows > block) {
    std::vector<float> y3(static_cast<size_t>(c.rows * ldy), sentinel);
    for (int64_t r0 = 0; r0 < c.rows; r0 += block) {
      const int64_t gr = std::min(block, c.rows - r0);
      pack_rows(x.data() + r0 * ldx, gr, ldx, *pw, block, xs.get(), 0, 1);
      gemm_packed_rows(xs.get(), gr, block, *pw, c.bias ? bias.data() : nullptr, y3.data() + r0 * ldy, ldy, n_begin,
                       n_end, act);
    }
    CHECK(std::memcmp(y.data(), y3.data(), y.size() * sizeof(float)) == 0,
          "%s %s N %ld K %ld rows %ld: packed row groups differ from gemm_packed", isa_name(isa), wtype_name(t),
          (long)c.N, (long)c.K, (long)c.rows);
  }
}

void test_products() {
  std::vector<Case> cases;
  const int64_t Ns[] = {1, 15, 17, 33, 1001};
  const int64_t Ks[] = {1, 3, 768};
  const int64_t Rs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 50, 130};
  int i = 0;
  for (int64_t N : Ns)
    for (int64_t K : Ks)
      for (int64_t R : Rs) {
        if (N * K * R > 30'000'000) continue;
        if (N == 1001 && K == 768 && R > 13 && R != 50) continue;
        ++i;
        Case c{N, K, R, (i % 2) == 0, (i % 3 == 0) ? 5 : 0, (i % 4 == 1) ? 3 : 0, (i % 5 == 2) ? 7 : 0, (i % 2) == 1,
               0, -1};
        cases.push_back(c);
      }
  // Ranges starting on a non-zero panel boundary and ending inside a panel; a larger K for the K-blocking.
  cases.push_back({1001, 768, 8, false, 0, 0, 0, true, 2, 1001 - 9});
  cases.push_back({1001, 768, 50, true, 11, 1, 0, true, 3, 700});
  cases.push_back({200, 3000, 13, true, 0, 0, 0, false, 1, 150});
  cases.push_back({70, 3001, 20, false, 0, 1, 2, true, 1, 70});  // K not a multiple of 4; several row blocks in the wide build
  cases.push_back({33, 2050, 37, true, 1, 0, 0, true, 0, 33});
  cases.push_back({200, 3000, 1, false, 0, 0, 3, true, 1, 151});
  cases.push_back({100, 1000, 130, false, 3, 2, 1, true, 1, 99});
  cases.push_back({40, 513, 7, true, 0, 0, 0, true, 1, 40});
  for (Isa isa : runnable_isas())
    for (WType t : {WType::F32, WType::BF16, WType::I8}) {
      const int before = g_failures;
      // Every third case with each epilogue activation, so each runs over every kind of shape and range.
      for (size_t j = 0; j < cases.size(); ++j) run_case(isa, t, cases[j], static_cast<Act>(j % 3));
      std::printf("%-8s %-8s %zu products: %s\n", isa_name(isa), wtype_name(t), cases.size(),
                  g_failures == before ? "ok" : "FAILED");
    }
  // int8 through bf16 pairs (PackedWeight::i8_dot): on avx512bf16 against x rounded to bf16; elsewhere the flag is
  // ignored and the plain int8 loop runs (the reference keeps x as it is).
  for (Isa isa : runnable_isas()) {
    const int before = g_failures;
    for (size_t j = 0; j < cases.size(); ++j) run_case(isa, WType::I8, cases[j], static_cast<Act>(j % 3), true);
    std::printf("%-8s int8 i8_dot %zu products: %s\n", isa_name(isa), cases.size(), g_failures == before ? "ok" : "FAILED");
  }
}

void test_choose_isa() {
  CpuFeatures none;
  CpuFeatures avx2;
  avx2.avx2 = avx2.fma = avx2.f16c = true;
  CpuFeatures avx512 = avx2;
  avx512.avx512f = avx512.avx512bw = avx512.avx512vl = avx512.avx512dq = true;
  CpuFeatures partial = avx2;
  partial.avx512f = true;  // F alone (e.g. Knights Landing) is not enough
  CHECK(choose_isa(none, nullptr) == Isa::Portable, "none");
  CHECK(choose_isa(avx2, nullptr) == Isa::Avx2, "avx2");
  CHECK(choose_isa(avx512, nullptr) == Isa::Avx512, "avx512");
  CHECK(choose_isa(partial, nullptr) == Isa::Avx2, "partial avx512");
  CHECK(choose_isa(avx2, "avx512") == Isa::Avx2, "avx512 request lowered");
  CHECK(choose_isa(none, "avx2") == Isa::Portable, "avx2 request lowered");
  CHECK(choose_isa(avx512, "portable") == Isa::Portable, "portable honoured");
  CHECK(choose_isa(avx512, "avx2") == Isa::Avx2, "avx2 honoured");
  CHECK(choose_isa(avx2, "portable") == Isa::Portable, "portable honoured");
  CHECK(choose_isa(avx512, "garbage") == Isa::Avx512, "garbage -> best");
  CHECK(choose_isa(avx2, "") == Isa::Avx2, "empty -> best");
  CpuFeatures bf16 = avx512;
  bf16.avx512_bf16 = true;
  CHECK(choose_isa(bf16, nullptr) == Isa::Avx512Bf16, "avx512 + bf16");
  CHECK(choose_isa(bf16, "avx512") == Isa::Avx512, "avx512 honoured below avx512bf16");
  CHECK(choose_isa(avx512, "avx512bf16") == Isa::Avx512, "avx512bf16 request lowered");
  CpuFeatures bf16only = avx2;
  bf16only.avx512_bf16 = true;  // the flag without the AVX-512 base is not enough
  CHECK(choose_isa(bf16only, nullptr) == Isa::Avx2, "bf16 without avx512");
  CpuFeatures nofma = avx2;
  nofma.fma = false;
  CHECK(choose_isa(nofma, nullptr) == Isa::Portable, "avx2 without fma");
  const CpuFeatures f = cpu_features();
  const Isa active = active_isa();
  CHECK(static_cast<int>(active) <= static_cast<int>(choose_isa(f, nullptr)), "active above best");
  std::printf("cpu: avx2 %d fma %d f16c %d avx512 f/bw/vl/dq %d%d%d%d bf16 %d vnni %d avx_vnni %d amx tile/bf16/int8 "
              "%d%d%d; active %s\n",
              f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512vl, f.avx512dq, f.avx512_bf16, f.avx512_vnni,
              f.avx_vnni, f.amx_tile, f.amx_bf16, f.amx_int8, isa_name(active));
}

template <class F> bool throws_invalid(F f) {
  try {
    f();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

void test_errors() {
  std::vector<float> w(100, 1.f);
  const Isa isa = Isa::Portable;
  CHECK(throws_invalid([&] { pack(w.data(), 0, 10, false, 10, WType::F32, isa); }), "N 0");
  CHECK(throws_invalid([&] { pack(w.data(), 10, 0, false, 10, WType::F32, isa); }), "K 0");
  CHECK(throws_invalid([&] { pack(w.data(), -3, 10, false, 10, WType::F32, isa); }), "N < 0");
  CHECK(throws_invalid([&] { pack(w.data(), 10, 10, false, 9, WType::F32, isa); }), "ldw < K");
  CHECK(throws_invalid([&] { pack(w.data(), 10, 5, true, 9, WType::I8, isa); }), "ldw < N (kn)");
  CHECK(throws_invalid([&] { pack(nullptr, 10, 10, false, 10, WType::F32, isa); }), "null");
  CHECK(!throws_invalid([&] { pack(w.data(), 10, 10, false, 10, WType::BF16, isa); }), "good pack");
  auto pw = pack(w.data(), 10, 10, false, 10, WType::F32, isa);
  std::vector<float> x(20, 1.f), y(40);
  CHECK(throws_invalid([&] { gemm_packed(x.data(), 2, 10, *pw, nullptr, y.data(), 10, 1, 10); }), "n_begin mid-panel");
  CHECK(throws_invalid([&] { gemm_packed(x.data(), 2, 10, *pw, nullptr, y.data(), 10, 0, 11); }), "n_end > N");
  CHECK(throws_invalid([&] { gemm_packed(x.data(), 2, 9, *pw, nullptr, y.data(), 10, 0, 10); }), "ldx < K");
  CHECK(throws_invalid([&] { gemm_packed(x.data(), 2, 10, *pw, nullptr, y.data(), 9, 0, 10); }), "ldy < n_end");
  CHECK(!throws_invalid([&] { gemm_packed(x.data(), 2, 10, *pw, nullptr, y.data(), 10, 0, 10); }), "good product");
  CHECK(y[0] == 10.f && y[19] == 10.f, "ones: %g %g", y[0], y[19]);
  CHECK(!throws_invalid([&] { gemm_packed(x.data(), 0, 10, *pw, nullptr, y.data(), 10, 0, 10); }), "no rows");
  // Packing for an ISA the CPU lacks is fine (and unpacks anywhere); multiplying with it throws.
  const Isa best = choose_isa(cpu_features(), nullptr);
  for (Isa above : {Isa::Avx512, Isa::Avx512Bf16}) {
    if (static_cast<int>(best) >= static_cast<int>(above)) continue;
    for (WType t : {WType::F32, WType::BF16}) {
      auto p512 = pack(w.data(), 10, 10, false, 10, t, above);
      CHECK(throws_invalid([&] { gemm_packed(x.data(), 2, 10, *p512, nullptr, y.data(), 10, 0, 10); }),
            "%s weight on a CPU without it", isa_name(above));
      std::vector<float> u(100);
      unpack(*p512, u.data());
      CHECK(u == w, "%s layout unpacks anywhere", isa_name(above));
    }
  }
}

void test_special_values() {
  for (Isa isa : runnable_isas()) {
    // int8: an all-zero column gets scale 1 and gives exact zeros (no NaN).
    const int64_t N = 20, K = 9;
    std::vector<float> w = randv(N * K);
    for (int64_t k = 0; k < K; ++k) w[3 * K + k] = 0.f;
    auto pi = pack(w.data(), N, K, false, K, WType::I8, isa);
    CHECK(pi->scale[3] == 1.f, "zero column scale %g", pi->scale[3]);
    std::vector<float> x = randv(2 * K), y(2 * N), bias(N, 0.5f);
    gemm_packed(x.data(), 2, K, *pi, bias.data(), y.data(), N, 0, N);
    CHECK(y[3] == 0.5f && y[N + 3] == 0.5f, "zero column: %g %g", y[3], y[N + 3]);
    for (float v : y) CHECK(std::isfinite(v), "int8 result not finite");
    // int8: the largest |w| of a column maps to +-127 exactly.
    std::vector<float> u(N * K);
    unpack(*pi, u.data());
    for (int64_t n = 0; n < N; ++n) {
      if (n == 3) continue;
      float amax = 0.f, back = 0.f;
      for (int64_t k = 0; k < K; ++k)
        if (std::fabs(w[n * K + k]) > amax) { amax = std::fabs(w[n * K + k]); back = std::fabs(u[n * K + k]); }
      CHECK(std::fabs(back - amax) <= 1e-6f * amax, "int8 max maps back: %g vs %g", back, amax);
    }
    // bf16: NaN and +-Inf weights survive packing; NaN/Inf inputs reach only their rows.
    std::vector<float> wb = randv(N * K);
    wb[0] = NAN;
    wb[1 * K + 2] = INFINITY;
    wb[2 * K + 1] = -INFINITY;
    wb[4 * K] = 3.0e38f;  // rounds to a finite bf16 or to Inf by RNE: either way not NaN
    auto pb = pack(wb.data(), N, K, false, K, WType::BF16, isa);
    std::vector<float> ub(N * K);
    unpack(*pb, ub.data());
    CHECK(std::isnan(ub[0]), "bf16 NaN kept");
    CHECK(ub[1 * K + 2] == INFINITY && ub[2 * K + 1] == -INFINITY, "bf16 Inf kept");
    CHECK(!std::isnan(ub[4 * K]), "bf16 big");
    std::vector<float> xb(3 * K, 1.f);
    xb[K + 4] = NAN;        // row 1
    xb[2 * K + 5] = INFINITY;  // row 2
    std::vector<float> yb(3 * N);
    gemm_packed(xb.data(), 3, K, *pb, nullptr, yb.data(), N, 0, N);
    CHECK(std::isnan(yb[0]), "NaN weight column -> NaN");
    CHECK(yb[1] == INFINITY && yb[2] == -INFINITY, "Inf weight columns: %g %g", yb[1], yb[2]);
    bool row0_finite_elsewhere = true;
    for (int64_t n = 3; n < N; ++n)
      if (n != 4 && !std::isfinite(yb[n])) row0_finite_elsewhere = false;
    CHECK(row0_finite_elsewhere, "row 0 finite elsewhere");
    for (int64_t n = 3; n < N; ++n) CHECK(std::isnan(yb[N + n]), "NaN input row -> NaN");
    int inf_or_nan = 0;
    for (int64_t n = 3; n < N; ++n) inf_or_nan += !std::isfinite(yb[2 * N + n]);
    CHECK(inf_or_nan == N - 3, "Inf input row -> non-finite");
    // bf16 rounding is to nearest even on the float32 bits.
    float tie;
    uint32_t tb = 0x3F808000u;  // 1.00390625: exactly between bf16 0x3F80 and 0x3F81 -> even 0x3F80
    std::memcpy(&tie, &tb, 4);
    std::vector<float> wt(1, tie);
    auto pt = pack(wt.data(), 1, 1, false, 1, WType::BF16, isa);
    float ut;
    unpack(*pt, &ut);
    CHECK(ut == 1.f, "bf16 tie to even: %.9g", ut);
  }
}

// The activations at the extremes: the e^x clamp keeps them finite and right, NaN stays NaN.
void test_activation_extremes() {
  const float xs[] = {-1e13f, -1000.f, -100.f, -20.f, -3.f, -1.f, -1e-3f, 0.f, 1e-3f, 0.5f, 1.f, 3.f, 20.f, 100.f, 1000.f,
                      1e13f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const int64_t n = 32;
  std::vector<float> w(1, 1.f);
  for (Isa isa : runnable_isas())
    for (Act act : {Act::QuickGelu, Act::GeluTanh}) {
      auto pw = pack(w.data(), 1, 1, false, 1, WType::F32, isa);
      std::vector<float> y(n);
      gemm_packed(xs, n, 1, *pw, nullptr, y.data(), 1, 0, 1, act);  // n rows of one input each
      for (int64_t i = 0; i < n; ++i) {
        const double want = act_ref(xs[i], act);
        CHECK(std::isfinite(y[i]) && std::fabs(y[i] - want) <= 1e-6 * std::fabs(want) + 1e-20,
              "%s act %d: f(%g) = %.9g, want %.9g", isa_name(isa), (int)act, xs[i], y[i], want);
      }
      const float nan_in = NAN;
      float out = 0.f;
      gemm_packed(&nan_in, 1, 1, *pw, nullptr, &out, 1, 0, 1, act);
      CHECK(std::isnan(out), "%s act %d: NaN in, %g out", isa_name(isa), (int)act, out);
    }
  float bad = 0.f;
  auto pw = pack(w.data(), 1, 1, false, 1, WType::F32, Isa::Portable);
  CHECK(throws_invalid([&] { gemm_packed(&bad, 1, 1, *pw, nullptr, &bad, 1, 0, 1, static_cast<Act>(7)); }),
        "unknown activation");
}

// activate() after a product without its activation is bitwise the fused product, on every runnable ISA, for
// lengths that end inside a vector; Act::None copies; bad arguments throw.
void test_activate() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (Isa isa : runnable_isas())
    for (int64_t N : {1, 13, 45, 64}) {
      const int64_t rows = 5, K = 37;
      std::vector<float> x(rows * K), w(N * K), b(N);
      for (float& v : x) v = nd(rng);
      for (float& v : w) v = nd(rng);
      for (float& v : b) v = nd(rng);
      auto pw = pack(w.data(), N, K, false, K, WType::F32, isa);
      for (Act act : {Act::QuickGelu, Act::GeluTanh, Act::None}) {
        std::vector<float> fused(rows * N), plain(rows * N), after(rows * N, -1.f);
        gemm_packed(x.data(), rows, K, *pw, b.data(), fused.data(), N, 0, N, act);
        gemm_packed(x.data(), rows, K, *pw, b.data(), plain.data(), N, 0, N, Act::None);
        activate(plain.data(), after.data(), rows * N, act, isa);
        CHECK(std::memcmp(fused.data(), after.data(), fused.size() * sizeof(float)) == 0,
              "%s act %d N %lld: activate after the product differs from the fused product", isa_name(isa), (int)act,
              (long long)N);
        activate(plain.data(), plain.data(), rows * N, act, isa);  // in place
        CHECK(std::memcmp(fused.data(), plain.data(), fused.size() * sizeof(float)) == 0,
              "%s act %d N %lld: in place", isa_name(isa), (int)act, (long long)N);
      }
    }
  float v = 1.f;
  CHECK(throws_invalid([&] { activate(nullptr, &v, 1, Act::GeluTanh, Isa::Portable); }), "activate: null x");
  CHECK(throws_invalid([&] { activate(&v, &v, -1, Act::GeluTanh, Isa::Portable); }), "activate: n below 0");
  CHECK(throws_invalid([&] { activate(&v, &v, 1, static_cast<Act>(7), Isa::Portable); }), "activate: unknown activation");
}

// greedy_pick against a double-precision argmax / log-sum-exp, on every runnable ISA: lengths around the vector
// widths and GPT-2's vocabulary, ties (the first index wins, as torch's argmax), -inf entries (masked end tokens),
// the maximum in the tail, and the rows it must hand back (NaN, all -inf, +inf, empty).
void test_greedy_pick() {
  auto reference = [](const std::vector<float>& x, int64_t& arg, double& logp) {
    arg = 0;
    for (size_t i = 1; i < x.size(); ++i)
      if (x[i] > x[arg]) arg = static_cast<int64_t>(i);
    double s = 0;
    for (float v : x) s += std::exp(static_cast<double>(v) - x[arg]);
    logp = -std::log(s);
  };
  for (Isa isa : runnable_isas()) {
    int checked = 0;
    for (int64_t n : {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1000, 50257}) {
      for (int variant = 0; variant < 5; ++variant) {
        std::vector<float> x = randv(n, -8.f, 8.f);
        if (variant == 1 && n > 3) {  // ties: the same maximum at three places, the first must win
          const float top = 9.f;
          x[n / 3] = x[n / 2] = x[n - 1] = top;
        } else if (variant == 2) {  // masked entries, the maximum among the rest
          for (int64_t i = 0; i < n; i += 3) x[i] = -INFINITY;
          if (n % 3 == 1 && n < 3) x[0] = 0.5f;  // keep one finite value
        } else if (variant == 3) {  // the maximum in the scalar tail
          x[n - 1] = 20.f;
        } else if (variant == 4) {  // large logits (e^x would overflow without the shift)
          for (auto& v : x) v *= 40.f;
        }
        int64_t arg = -1, want_arg = -1;
        float logp = 1.f;
        double want_logp = 0;
        reference(x, want_arg, want_logp);
        const bool ok = greedy_pick(x.data(), n, &arg, &logp, isa);
        CHECK(ok && arg == want_arg, "%s n %ld variant %d: ok %d arg %ld, want %ld", isa_name(isa), (long)n, variant,
              (int)ok, (long)arg, (long)want_arg);
        CHECK(std::fabs(logp - want_logp) <= 2e-6 * (1 + std::fabs(want_logp)), "%s n %ld variant %d: logp %.9g, want %.9g",
              isa_name(isa), (long)n, variant, logp, want_logp);
        ++checked;
      }
    }
    int64_t arg = 7;
    float logp = 7.f;
    std::vector<float> x = randv(40);
    x[21] = NAN;
    CHECK(!greedy_pick(x.data(), 40, &arg, &logp, isa) && arg == 7 && logp == 7.f, "%s: NaN in the body", isa_name(isa));
    x[21] = 0.f;
    x[39] = NAN;
    CHECK(!greedy_pick(x.data(), 39 + 1, &arg, &logp, isa), "%s: NaN in the tail", isa_name(isa));
    x[39] = INFINITY;
    CHECK(!greedy_pick(x.data(), 40, &arg, &logp, isa), "%s: +inf", isa_name(isa));
    std::vector<float> masked(19, -INFINITY);
    CHECK(!greedy_pick(masked.data(), 19, &arg, &logp, isa), "%s: all -inf", isa_name(isa));
    CHECK(!greedy_pick(x.data(), 0, &arg, &logp, isa), "%s: empty", isa_name(isa));
    std::printf("%-8s greedy_pick: %d rows\n", isa_name(isa), checked);
  }
  if (static_cast<int>(choose_isa(cpu_features(), nullptr)) < static_cast<int>(Isa::Avx512)) {
    float v = 1.f;
    int64_t arg;
    float logp;
    CHECK(throws_invalid([&] { greedy_pick(&v, 1, &arg, &logp, Isa::Avx512); }), "greedy_pick on an ISA this CPU lacks");
  }
}

// attend against a double-precision softmax(q . k / sqrt(D)) . v, on every runnable ISA: head sizes around the vector
// widths (GPT-2's 64 among them, and a scalar tail), lengths around them, large scores (the shift by the maximum),
// scratch that is exactly len floats; and the sizes it refuses.
void test_attend() {
  for (Isa isa : runnable_isas()) {
    int checked = 0;
    for (int64_t D : {1, 3, 4, 8, 15, 16, 17, 64, 67}) {
      for (int64_t len : {1, 2, 7, 8, 15, 16, 17, 40}) {
        for (float mag : {1.f, 30.f}) {
          std::vector<float> q = randv(D, -mag, mag), k = randv(len * D), v = randv(len * D), out(D, NAN);
          std::vector<float> scores(len);
          attend(q.data(), k.data(), v.data(), D, len, scores.data(), out.data(), isa);
          std::vector<double> p(len);
          double mx = -INFINITY, sum = 0;
          for (int64_t t = 0; t < len; ++t) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += static_cast<double>(q[d]) * k[t * D + d];
            p[t] = s / std::sqrt(static_cast<double>(D));
            mx = std::max(mx, p[t]);
          }
          for (auto& e : p) sum += (e = std::exp(e - mx));
          double worst = 0;
          for (int64_t d = 0; d < D; ++d) {
            double want = 0, scale = 0;
            for (int64_t t = 0; t < len; ++t) {
              want += p[t] / sum * v[t * D + d];
              scale += p[t] / sum * std::fabs(v[t * D + d]);
            }
            // float32 rounding of the scores (|score| up to ~mag * D) moves the weights; bound relative to the terms
            const double tol = 2e-6 * (1 + mag * std::sqrt(static_cast<double>(D))) * (scale + 1e-3);
            worst = std::max(worst, std::fabs(out[d] - want) / tol);
          }
          CHECK(worst <= 1, "%s attend D %ld len %ld mag %g: error %.2f x the bound", isa_name(isa), (long)D,
                (long)len, mag, worst);
          ++checked;
        }
      }
    }
    float f = 0.f;
    CHECK(throws_invalid([&] { attend(&f, &f, &f, 0, 1, &f, &f, isa); }), "%s attend: D 0", isa_name(isa));
    CHECK(throws_invalid([&] { attend(&f, &f, &f, 1, 0, &f, &f, isa); }), "%s attend: len 0", isa_name(isa));
    CHECK(throws_invalid([&] { attend(nullptr, &f, &f, 1, 1, &f, &f, isa); }), "%s attend: null q", isa_name(isa));
    std::printf("%-8s attend: %d cases\n", isa_name(isa), checked);
  }
}

// attend_queries against a double-precision reference on every runnable ISA: several queries per head (a row stride
// above D), keys given transposed, lengths around 4 vectors of keys (the blocked loop, the single vectors and the
// scalar tail), causal and not; and the sizes it refuses.
void test_attend_queries() {
  for (Isa isa : runnable_isas()) {
    int checked = 0;
    for (int64_t D : {1, 5, 16, 64, 67}) {
      for (int64_t Tk : {1, 7, 31, 32, 33, 50, 70}) {
        for (bool causal : {false, true}) {
          const int64_t nq = causal ? std::min<int64_t>(Tk, 9) : 9, ldq = D + 3, ldo = D + 5;
          const int64_t ldk = attend_keys_stride(Tk) + (D % 2) * 16;  // the least stride, and more
          std::vector<float> q = randv(nq * ldq, -3.f, 3.f), k = randv(Tk * D), v = randv(Tk * D), kt = randv(D * ldk);
          for (int64_t t = 0; t < Tk; ++t)
            for (int64_t d = 0; d < D; ++d) kt[d * ldk + t] = k[t * D + d];  // the padding stays random
          std::vector<float> out(nq * ldo, NAN), scores(ldk);
          attend_queries(q.data(), ldq, nq, kt.data(), ldk, v.data(), D, D, Tk, causal, scores.data(), out.data(), ldo, isa);
          // Each query alone (over the keys it sees) gives bitwise its row of the batch.
          bool alone_same = true;
          for (int64_t i = 0; i < nq; ++i) {
            const int64_t len = causal ? Tk - nq + i + 1 : Tk;
            std::vector<float> one(D, NAN);
            attend_queries(q.data() + i * ldq, ldq, 1, kt.data(), ldk, v.data(), D, D, len, false, scores.data(),
                           one.data(), D, isa);
            alone_same = alone_same && std::memcmp(one.data(), out.data() + i * ldo, D * sizeof(float)) == 0;
          }
          CHECK(alone_same, "%s attend_queries D %ld Tk %ld causal %d: a query alone differs from its row in the batch",
                isa_name(isa), (long)D, (long)Tk, causal);
          double worst = 0;
          for (int64_t i = 0; i < nq; ++i) {
            const int64_t len = causal ? Tk - nq + i + 1 : Tk;
            std::vector<double> p(len);
            double mx = -INFINITY, sum = 0;
            for (int64_t t = 0; t < len; ++t) {
              double s = 0;
              for (int64_t d = 0; d < D; ++d) s += static_cast<double>(q[i * ldq + d]) * k[t * D + d];
              p[t] = s / std::sqrt(static_cast<double>(D));
              mx = std::max(mx, p[t]);
            }
            for (auto& e : p) sum += (e = std::exp(e - mx));
            for (int64_t d = 0; d < D; ++d) {
              double want = 0, scale = 0;
              for (int64_t t = 0; t < len; ++t) {
                want += p[t] / sum * v[t * D + d];
                scale += p[t] / sum * std::fabs(v[t * D + d]);
              }
              const double tol = 2e-6 * (1 + 3 * std::sqrt(static_cast<double>(D))) * (scale + 1e-3);
              worst = std::max(worst, std::fabs(out[i * ldo + d] - want) / tol);
            }
          }
          CHECK(worst <= 1, "%s attend_queries D %ld Tk %ld causal %d: error %.2f x the bound", isa_name(isa), (long)D,
                (long)Tk, causal, worst);
          ++checked;
        }
      }
    }
    float f = 0.f;
    CHECK(throws_invalid([&] { attend_queries(&f, 1, 1, &f, 16, &f, 1, 0, 1, false, &f, &f, 1, isa); }), "%s attend_queries: D 0", isa_name(isa));
    CHECK(throws_invalid([&] { attend_queries(&f, 1, 2, &f, 16, &f, 1, 1, 1, true, &f, &f, 1, isa); }), "%s attend_queries: causal nq > Tk", isa_name(isa));
    CHECK(throws_invalid([&] { attend_queries(&f, 0, 1, &f, 16, &f, 1, 1, 1, false, &f, &f, 1, isa); }), "%s attend_queries: ldq < D", isa_name(isa));
    CHECK(throws_invalid([&] { attend_queries(&f, 1, 1, &f, 15, &f, 1, 1, 17, false, &f, &f, 1, isa); }), "%s attend_queries: ldk too small", isa_name(isa));
    std::printf("%-8s attend_queries: %d cases\n", isa_name(isa), checked);
  }
}

// layer_norm against a double-precision reference on every runnable ISA: widths around the vector widths (CLIP's and
// GPT-2's 768 among them, and scalar tails), rows with a large offset (the mean subtracted before squaring), a
// constant row (variance 0: eps alone), in place; rows independent of one another; and the sizes it refuses.
void test_layer_norm() {
  for (Isa isa : runnable_isas()) {
    int checked = 0;
    for (int64_t C : {1, 3, 8, 15, 16, 17, 33, 64, 768, 1029}) {
      for (float offset : {0.f, 100.f}) {
        const int64_t rows = 3;
        std::vector<float> x = randv(rows * C, -2.f, 2.f), w = randv(C), b = randv(C), y(rows * C, NAN);
        for (auto& e : x) e += offset;
        for (int64_t c = 0; c < C; ++c) x[2 * C + c] = 0.5f;  // a constant row
        const float eps = 1e-5f;
        layer_norm(x.data(), rows, C, w.data(), b.data(), eps, y.data(), isa);
        for (int64_t r = 0; r < rows; ++r) {
          double mean = 0, var = 0;
          for (int64_t c = 0; c < C; ++c) mean += x[r * C + c];
          mean /= C;
          for (int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mean) * (x[r * C + c] - mean);
          var /= C;
          const double rstd = 1 / std::sqrt(var + eps);
          double worst = 0;
          for (int64_t c = 0; c < C; ++c) {
            const double want = (x[r * C + c] - mean) * rstd * w[c] + b[c];
            // float32 rounding of x - mean (relative to |x|, offset included) scaled by rstd, plus the products'
            const double tol = 4e-6 * ((std::fabs(x[r * C + c]) + std::fabs(mean)) * rstd * std::fabs(w[c]) + std::fabs(want) + 1);
            worst = std::max(worst, std::fabs(y[r * C + c] - want) / tol);
          }
          CHECK(worst <= 1, "%s layer_norm C %ld offset %g row %ld: error %.2f x the bound", isa_name(isa), (long)C,
                offset, (long)r, worst);
        }
        // Row 1 alone, and in place, gives the same bits as within the batch.
        std::vector<float> one(x.begin() + C, x.begin() + 2 * C);
        layer_norm(one.data(), 1, C, w.data(), b.data(), eps, one.data(), isa);
        CHECK(std::memcmp(one.data(), y.data() + C, sizeof(float) * C) == 0, "%s layer_norm C %ld: row alone/in place differs",
              isa_name(isa), (long)C);
        ++checked;
      }
    }
    float f = 0.f;
    CHECK(throws_invalid([&] { layer_norm(&f, 1, 0, &f, &f, 1e-5f, &f, isa); }), "%s layer_norm: C 0", isa_name(isa));
    CHECK(throws_invalid([&] { layer_norm(&f, -1, 1, &f, &f, 1e-5f, &f, isa); }), "%s layer_norm: rows -1", isa_name(isa));
    CHECK(throws_invalid([&] { layer_norm(&f, 1, 1, nullptr, &f, 1e-5f, &f, isa); }), "%s layer_norm: null w", isa_name(isa));
    CHECK(throws_invalid([&] { layer_norm(&f, 1, 1, &f, &f, NAN, &f, isa); }), "%s layer_norm: eps NaN", isa_name(isa));
    std::printf("%-8s layer_norm: %d cases\n", isa_name(isa), checked);
  }
}


// A field of /proc/self/status or /proc/self/smaps_rollup in KiB; -1 where there is none (not Linux).
long proc_kib(const char* file, const char* field) {
  FILE* f = std::fopen(file, "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') v = std::atol(line + n + 1);
  std::fclose(f);
  return v;
}

bool thp_possible() {
  FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f) return false;
  char line[256] = {0};
  const bool ok = std::fgets(line, sizeof line, f) && (std::strstr(line, "[always]") || std::strstr(line, "[madvise]"));
  std::fclose(f);
  return ok;
}

// Packed weights of every size (malloc'd small ones; large ones carved from 2 MiB-page mappings, one larger than a
// mapping): exact float32 round trips, 64-byte aligned, zero padding (a block is never handed out twice), the large
// ones on huge pages where the kernel allows them, and all of the memory given back once they are freed.
void test_packed_memory() {
  const Isa isa = choose_isa(cpu_features(), nullptr);
  struct Shape { int64_t N, K; };
  const Shape shapes[] = {{61, 67}, {200, 100}, {768, 768}, {3072, 768}, {768, 768}, {2304, 8000}, {1000, 300}};
  const long rss0 = proc_kib("/proc/self/status", "VmRSS"), huge0 = proc_kib("/proc/self/smaps_rollup", "AnonHugePages");
  std::vector<std::unique_ptr<PackedWeight>> ws;
  std::vector<std::vector<float>> srcs;
  size_t large_bytes = 0;
  for (int round = 0; round < 2; ++round) {
    for (const Shape& sh : shapes) {
      srcs.push_back(randv(static_cast<size_t>(sh.N * sh.K)));
      ws.push_back(pack(srcs.back().data(), sh.N, sh.K, false, sh.K, WType::F32, isa));
      if (ws.back()->data_bytes >= (size_t{64} << 10)) large_bytes += ws.back()->data_bytes;
    }
    if (round == 0) {  // free every other one: later blocks must still come zeroed and whole
      for (size_t i = 0; i < ws.size(); i += 2) ws[i].reset();
    }
  }
  for (size_t i = 0; i < ws.size(); ++i) {
    if (!ws[i]) continue;
    const PackedWeight& w = *ws[i];
    CHECK(reinterpret_cast<uintptr_t>(w.data) % 64 == 0, "weight %zu at %p", i, w.data);
    std::vector<float> back(static_cast<size_t>(w.N * w.K));
    unpack(w, back.data());
    CHECK(std::memcmp(back.data(), srcs[i].data(), back.size() * 4) == 0, "weight %zu (%ld x %ld) round trip", i,
          static_cast<long>(w.N), static_cast<long>(w.K));
    // Padding columns (past N in the last panel) read as zero: a product over all panels equals the exact sum.
    const int64_t rows = 3;
    std::vector<float> x = randv(static_cast<size_t>(rows * w.K)), y(static_cast<size_t>(rows * w.N));
    gemm_packed(x.data(), rows, w.K, w, nullptr, y.data(), w.N, 0, w.N);
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t n = 0; n < w.N; n += 97) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < w.K; ++k) {
          ref += static_cast<double>(x[r * w.K + k]) * srcs[i][n * w.K + k];
          mag += std::fabs(static_cast<double>(x[r * w.K + k]) * srcs[i][n * w.K + k]);
        }
        worst = std::max(worst, std::fabs(y[r * w.N + n] - ref) / (mag + 1e-30));
      }
    CHECK(worst < 1e-5, "weight %zu: relative error %g", i, worst);
  }
  const long rss1 = proc_kib("/proc/self/status", "VmRSS"), huge1 = proc_kib("/proc/self/smaps_rollup", "AnonHugePages");
  if (rss0 >= 0 && huge0 >= 0 && thp_possible()) {
    long live_large = 0;
    for (auto& w : ws)
      if (w && w->data_bytes >= (size_t{64} << 10)) live_large += static_cast<long>(w->data_bytes / 1024);
    // (the kernel may find no free 2 MiB page now and then: most, not all)
    CHECK(huge1 - huge0 >= live_large / 2, "huge pages grew by %ld KiB for %ld KiB of large weights", huge1 - huge0,
          live_large);
  }
  ws.clear();
  srcs.clear();
  srcs.shrink_to_fit();
  const long rss2 = proc_kib("/proc/self/status", "VmRSS");
  if (rss0 >= 0) {
    CHECK(rss1 - rss0 > static_cast<long>(large_bytes / 1024 / 3), "RSS %ld -> %ld KiB while packed", rss0, rss1);
    CHECK(rss2 - rss0 < 16 * 1024, "RSS %ld KiB before packing, %ld after freeing every weight", rss0, rss2);
  }
  std::printf("packed memory: %zu KiB of large blocks; RSS %ld -> %ld -> %ld KiB; AnonHugePages %ld -> %ld KiB\n",
              large_bytes / 1024, rss0, rss1, rss2, huge0, huge1);
}
}  // namespace

int main() {
  test_activation_extremes();
  test_activate();
  test_choose_isa();
  test_errors();
  test_special_values();
  test_products();
  test_greedy_pick();
  test_attend();
  test_layer_norm();
  test_attend_queries();
  test_packed_memory();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
