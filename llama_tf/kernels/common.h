// What llama_tf's kernels share, whichever framework calls them: number types, AVX-512 loads, a thread
// pool's parallel loop, a dot product, and reading and writing float32/bfloat16 arrays (all inline, so
// every source of a library includes it). The bindings (xla_ffi.h for JAX, tf_ops.cc for TensorFlow)
// hand the loops their framework's thread pool as a `Pool`.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace llama_tf {

using bf16 = uint16_t;
using f16 = uint16_t;

inline float from_bf16(bf16 h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline bf16 to_bf16(float f) {  // round to nearest even, as XLA rounds
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;  // NaN
  return bf16((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

inline float from_f16(f16 h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while (!(mantissa & 0x400)) mantissa <<= 1, --exponent;
    bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float widen(float w) { return w; }
inline float widen(bf16 w) { return from_bf16(w); }

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const bf16* p) {  // bfloat16 is float32's top half: widen by a shift
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

// A framework's CPU thread pool: its `Schedule` and its number of threads.
struct Pool {
  std::function<void(std::function<void()>)> schedule;
  int64_t threads;
};

// Workers for a product of `weights` weights: every thread of the pool, unless the product is too small
// to repay waking them.
inline int64_t workers_for(const Pool& pool, int64_t weights) {
  return weights < (1 << 16) ? 1 : std::max<int64_t>(1, pool.threads);
}

// The i-th of `count` contiguous parts of [0, items), cut at multiples of `grain`.
inline std::pair<int64_t, int64_t> part(int64_t items, int64_t grain, int64_t i, int64_t count) {
  int64_t chunks = (items + grain - 1) / grain;
  return {std::min(items, chunks * i / count * grain), std::min(items, chunks * (i + 1) / count * grain)};
}

// Runs body(i) for i in [0, count) on the calling thread and the framework's CPU thread pool (XLA's or
// TensorFlow's): the threads that run the rest of the step, so the kernels never compete with threads of
// their own (OpenMP's did, inside a step). Each i goes to whichever thread claims it first, so a pool
// busy elsewhere only means the caller does more itself; the call returns when every i is done, and a
// task that starts later finds nothing.
template <class Body>
void parallel(const Pool& pool, int64_t count, const Body& body) {
  if (count <= 1) {
    if (count == 1) body(0);
    return;
  }
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, count, &body] {   // `body` is touched only for a claimed i, before the call returns
    for (int64_t i; (i = progress->next.fetch_add(1, std::memory_order_relaxed)) < count;) {
      body(i);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t helper = 1; helper < count; ++helper) pool.schedule(work);   // a copy each
  work();
  while (progress->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

// Σ_i x[i] · row[i] in four sums side by side: one attention score (attention.cc). The products use
// dot_rows below, which reads several rows at once.
template <class W>
float dot(const float* x, const W* row, int64_t k) {
  int64_t i = 0;
  float sum = 0.0f;
#if defined(__AVX512F__)
  __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps(), c = _mm512_setzero_ps(), d = _mm512_setzero_ps();
  for (; i + 64 <= k; i += 64) {
    a = _mm512_fmadd_ps(load16(row + i), _mm512_loadu_ps(x + i), a);
    b = _mm512_fmadd_ps(load16(row + i + 16), _mm512_loadu_ps(x + i + 16), b);
    c = _mm512_fmadd_ps(load16(row + i + 32), _mm512_loadu_ps(x + i + 32), c);
    d = _mm512_fmadd_ps(load16(row + i + 48), _mm512_loadu_ps(x + i + 48), d);
  }
  for (; i + 16 <= k; i += 16) a = _mm512_fmadd_ps(load16(row + i), _mm512_loadu_ps(x + i), a);
  sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
#endif
  for (; i < k; ++i) sum += x[i] * widen(row[i]);
  return sum;
}

// out[s] = Σ_i x[i] · rows[s][i] for S rows at once, each load of x shared by the S rows. Where x and the
// rows are both bfloat16 (a bfloat16 model's activations and weights), AVX512-BF16's vdpbf16ps multiplies
// 32 pairs per instruction, exactly, into float32 sums, as llama.cpp's bfloat16 product does; else
// each weight is widened to float32.
template <int S, class X, class W>
void dot_rows(const X* x, const W* const* rows, int64_t k, float* out) {
  int64_t i = 0;
  for (int s = 0; s < S; ++s) out[s] = 0.0f;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<X, bf16> && std::is_same_v<W, bf16>) {
    auto pairs = [](const bf16* p) { return (__m512bh)_mm512_loadu_si512(p); };
    __m512 sums[S];
    for (int s = 0; s < S; ++s) sums[s] = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
      __m512bh xs = pairs(x + i);
      for (int s = 0; s < S; ++s) sums[s] = _mm512_dpbf16_ps(sums[s], pairs(rows[s] + i), xs);
    }
    for (int s = 0; s < S; ++s) out[s] = _mm512_reduce_add_ps(sums[s]);
  }
#endif
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<X, float>) {
    __m512 sums[S];
    for (int s = 0; s < S; ++s) sums[s] = _mm512_setzero_ps();
    for (; i + 16 <= k; i += 16) {
      __m512 xs = _mm512_loadu_ps(x + i);
      for (int s = 0; s < S; ++s) sums[s] = _mm512_fmadd_ps(load16(rows[s] + i), xs, sums[s]);
    }
    for (int s = 0; s < S; ++s) out[s] = _mm512_reduce_add_ps(sums[s]);
  }
#endif
  for (; i < k; ++i)
    for (int s = 0; s < S; ++s) out[s] += widen(x[i]) * widen(rows[s][i]);
}

// A float32 or bfloat16 array.
struct Floats {
  void* data;
  bool bf16;
};

// `count` values of x as float32.
inline std::vector<float> widened(Floats x, int64_t count) {
  std::vector<float> out(count);
  if (!x.bf16) {
    std::memcpy(out.data(), x.data, count * 4);
  } else {
    const bf16* p = static_cast<const bf16*>(x.data);
    for (int64_t i = 0; i < count; ++i) out[i] = from_bf16(p[i]);
  }
  return out;
}

// y[offset + j] = values[j] for j in [begin, end), rounded to y's type.
inline void store(Floats y, int64_t offset, const float* values, int64_t begin, int64_t end) {
  if (!y.bf16) {
    std::memcpy(static_cast<float*>(y.data) + offset + begin, values + begin, (end - begin) * 4);
  } else {
    bf16* out = static_cast<bf16*>(y.data) + offset;
    for (int64_t j = begin; j < end; ++j) out[j] = to_bf16(values[j]);
  }
}

}  // namespace llama_tf
