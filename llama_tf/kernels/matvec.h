// Matrix-vector products for one-token decode steps: y (m, n) = x (m, k) · Wᵀ, read at memory speed.
//
// A decode step reads every weight once and does two flops with it, so its speed is the speed at which
// the weights stream from memory. These loops read each weight once, in the order it lies in memory, on
// every core (the framework's CPU thread pool, with the calling thread), and keep the sums in float32
// whatever the weights' type:
//
//   matvec       W float32 or bfloat16, stored (k, n) (a Keras Dense kernel: each input's row of weights
//                is added into all n outputs) or (n, k) (a projection held as the file holds it, or an
//                embedding table used as the output projection: one dot product per output)
//   matvec_q8_0  W as llama.cpp's Q8_0: int8 (n, k) and one float16 scale per 32 weights (n, k/32)
//
// x and y are float32 or bfloat16 (y in x's type). Built with -march=native on the machine that runs it
// (llama_tf/kernels/__init__.py): with AVX-512 the loops below use it, else the compiler vectorises the
// portable ones for what the machine has. Bound for JAX in matvec.cc, for TensorFlow in tf_ops.cc.
#pragma once

#include <cmath>

#include "common.h"

namespace llama_tf {

// y = Σ_{i in [i0, i1)} x[i] · W[i, :] for W (k, n): BAND_ROWS rows at a time (consecutive in memory), so
// the partial sums y go through the first-level cache once per BAND_ROWS rows of weights (bfloat16 rows
// of 768 weights read at 15-18 GB/s four at a time, 19-20 eight at a time, on Zen 5).
constexpr int BAND_ROWS = 8;

template <class W>
inline void rows_into(const float* x, const W* w, int64_t i0, int64_t i1, int64_t n, float* y) {
  std::fill(y, y + n, 0.0f);
  int64_t i = i0;
  for (; i + BAND_ROWS <= i1; i += BAND_ROWS) {
    const W* r = w + i * n;
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512 xs[BAND_ROWS];
    for (int u = 0; u < BAND_ROWS; ++u) xs[u] = _mm512_set1_ps(x[i + u]);
    for (; j + 16 <= n; j += 16) {
      __m512 a = _mm512_fmadd_ps(load16(r + j), xs[0], _mm512_loadu_ps(y + j));
      __m512 b = _mm512_mul_ps(load16(r + n + j), xs[1]);
      for (int u = 2; u < BAND_ROWS; u += 2) {
        a = _mm512_fmadd_ps(load16(r + u * n + j), xs[u], a);
        b = _mm512_fmadd_ps(load16(r + (u + 1) * n + j), xs[u + 1], b);
      }
      _mm512_storeu_ps(y + j, _mm512_add_ps(a, b));
    }
#endif
    for (; j < n; ++j) {
      float sum = 0.0f;
      for (int u = 0; u < BAND_ROWS; ++u) sum += x[i + u] * widen(r[u * n + j]);
      y[j] += sum;
    }
  }
  for (; i < i1; ++i)
    for (int64_t j = 0; j < n; ++j) y[j] += x[i] * widen(w[i * n + j]);
}

// Q8_0 products multiply integers: x is rounded once per call to int16 with one float scale per block of
// 32 (its error, at most 2⁻¹⁶ of the block's largest |x|, is far below the weights' 8 bits), so that 32
// weights cost one widening to int16, one multiply-add of int16 pairs into int32 (exact: 2 · 127 · 32767 <
// 2²⁴, so the float conversion is exact too) and one float multiply-add by the two blocks' scales. Widening
// the weights to float32 instead cost twice the instructions, and on 2 cores it could not keep up with
// memory: 21 GB/s at TinyLlama's shape, where llama.cpp read 34.
struct Int16Blocks {
  std::vector<int16_t> q;  // k values
  std::vector<float> d;    // k / 32 scales: x ≈ d · q
};

// With AVX-512 a block is two vectors, rounded as lrint rounds (to nearest even): the same values, in
// 0.35 µs for 2048 of them instead of 6.6, which the calling thread spent before the others could start
// (at 134M, 5 % of a Q8_0 step).
inline Int16Blocks to_int16_blocks(const float* x, int64_t k) {
  Int16Blocks out{std::vector<int16_t>(k), std::vector<float>(k / 32)};
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* block = x + 32 * b;
#if defined(__AVX512F__)
    __m512 low = _mm512_loadu_ps(block), high = _mm512_loadu_ps(block + 16);
    float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
#else
    float top = 0.0f;
    for (int i = 0; i < 32; ++i) top = std::max(top, std::fabs(block[i]));
#endif
    float d = top / 32767.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
    out.d[b] = d;
#if defined(__AVX512F__)
    __m512 scale = _mm512_set1_ps(inverse);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q.data() + 32 * b),
                        _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(low, scale))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q.data() + 32 * b + 16),
                        _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(high, scale))));
#else
    for (int i = 0; i < 32; ++i) out.q[32 * b + i] = int16_t(std::lrint(block[i] * inverse));
#endif
  }
  return out;
}

// Σ_32 x · q for one block, as an exact integer.
inline int32_t block_sum(const int16_t* x, const int8_t* q) {
  int32_t sum = 0;
  for (int i = 0; i < 32; ++i) sum += int32_t(x[i]) * q[i];
  return sum;
}

// Σ_blocks d_x · d_w · Σ_32 x · q for S rows of a Q8_0 matrix at once (k a multiple of 32), which share
// each load of x: out[s] for the row q[s] with its scales[s]. `scale` is scratch for S · k / 32 floats.
template <int S>
void dot_q8_0_rows(const Int16Blocks& x, const int8_t* const* q, const f16* const* scales, int64_t k, float* scale,
                   float* out) {
  int64_t blocks = k / 32, b = 0;
  for (int s = 0; s < S; ++s) {   // d_w · d_x for every block, as float32
    float* d = scale + s * blocks;
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= blocks; i += 16)
      _mm512_storeu_ps(d + i, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales[s] + i))),
                                            _mm512_loadu_ps(x.d.data() + i)));
#endif
    for (; i < blocks; ++i) d[i] = from_f16(scales[s][i]) * x.d[i];
    out[s] = 0.0f;
  }
#if defined(__AVX512BW__)
  __m512 sums[S];
  for (int s = 0; s < S; ++s) sums[s] = _mm512_setzero_ps();
  for (; b < blocks; ++b) {
    __m512i xb = _mm512_loadu_si512(x.q.data() + 32 * b);
    for (int s = 0; s < S; ++s) {
      __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[s] + 32 * b)));
      sums[s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(w, xb)), _mm512_set1_ps(scale[s * blocks + b]), sums[s]);
    }
  }
  for (int s = 0; s < S; ++s) out[s] = _mm512_reduce_add_ps(sums[s]);
#endif
  for (; b < blocks; ++b)
    for (int s = 0; s < S; ++s) out[s] += scale[s * blocks + b] * float(block_sum(x.q.data() + 32 * b, q[s] + 32 * b));
}

// y (m, n) = x · W, W (k, n): each thread takes a contiguous band of W's rows (memory read in one sweep)
// and sums it into its own partial outputs, which are then added up column by column.
template <class W>
void matvec_k_n(const Pool& pool, const std::vector<float>& x, const W* w, int64_t m, int64_t k, int64_t n,
                Floats y) {
  int64_t count = workers_for(pool, n * k);
  std::vector<float> partial(count * n);
  for (int64_t t = 0; t < m; ++t) {
    parallel(pool, count, [&](int64_t id) {
      auto [begin, end] = part(k, 1, id, count);
      rows_into(x.data() + t * k, w, begin, end, n, partial.data() + id * n);
    });
    parallel(pool, count, [&](int64_t id) {
      auto [begin, end] = part(n, 16, id, count);
      for (int64_t other = 1; other < count; ++other)
        for (int64_t j = begin; j < end; ++j) partial[j] += partial[other * n + j];
      store(y, t * n, partial.data(), begin, end);
    });
  }
}

// A thread's band of outputs [begin, end) of W (n, k), read as STREAMS sub-bands side by side, one row of
// each at a time: STREAMS long sequential streams, which keep more of memory's bandwidth busy than one.
// Measured on Zen 5, bfloat16, two threads: rows of 2048 and 5632 weights read at 25-28 GB/s with one
// stream a thread, 33-34 with four (8: 27-32); rows of 768 at 37-41 with one, 39-44 with four.
// `rows(S, js)` computes the S outputs js[0..S) (S a std::integral_constant: STREAMS, then 1 for each of
// the last few rows).
constexpr int STREAMS = 4;

template <class Rows>
void in_sub_bands(int64_t begin, int64_t end, const Rows& rows) {
  int64_t per = (end - begin) / STREAMS;   // rows of each sub-band
  for (int64_t i = 0; i < per; ++i) {
    int64_t js[STREAMS];
    for (int s = 0; s < STREAMS; ++s) js[s] = begin + s * per + i;
    rows(std::integral_constant<int, STREAMS>(), js);
  }
  for (int64_t j = begin + STREAMS * per; j < end; ++j) rows(std::integral_constant<int, 1>(), &j);
}

// y (m, n) = x · Wᵀ, W (n, k): one dot product per output, each thread a contiguous band of outputs.
template <class X, class W>
void matvec_n_k(const Pool& pool, const X* x, const W* w, int64_t m, int64_t k, int64_t n, Floats y) {
  int64_t count = workers_for(pool, n * k);
  std::vector<float> row(n);
  for (int64_t t = 0; t < m; ++t) {
    parallel(pool, count, [&](int64_t id) {
      auto [begin, end] = part(n, 16, id, count);
      in_sub_bands(begin, end, [&](auto streams, const int64_t* js) {
        constexpr int S = decltype(streams)::value;
        const W* rows[S];
        float sums[S];
        for (int s = 0; s < S; ++s) rows[s] = w + js[s] * k;
        dot_rows<S>(x + t * k, rows, k, sums);
        for (int s = 0; s < S; ++s) row[js[s]] = sums[s];
      });
      store(y, t * n, row.data(), begin, end);
    });
  }
}

// Why x (m, k), W and y cannot be multiplied, or nullptr: `w_rows` × `w_cols` as stored.
inline const char* matvec_mismatch(int64_t k, int64_t w_rows, int64_t w_cols, bool out_in) {
  return (out_in ? w_cols : w_rows) != k ? "x's and W's inner sizes differ" : nullptr;
}

inline const char* q8_0_mismatch(int64_t k, int64_t q_rows, int64_t q_cols, int64_t s_rows, int64_t s_cols) {
  bool agree = q_cols == k && k % 32 == 0 && s_rows == q_rows && s_cols == k / 32;
  return agree ? nullptr : "shapes disagree (W (n, k) for k a multiple of 32, scales (n, k / 32))";
}

// y (m, n) = x (m, k) · W for W float32 or bfloat16 (`w_bf16`), (k, n), or with `out_in` (n, k). Where x
// and W (n, k) are both bfloat16, the pairs are multiplied as they are (`dot_rows` of bfloat16 arrays).
inline void matvec(const Pool& pool, Floats x, const void* w, bool w_bf16, bool out_in, int64_t m, int64_t k,
                   int64_t n, Floats y) {
  if (out_in && w_bf16 && x.bf16) {
    matvec_n_k(pool, static_cast<const bf16*>(x.data), static_cast<const bf16*>(w), m, k, n, y);
    return;
  }
  std::vector<float> xf = widened(x, m * k);
  if (out_in && !w_bf16) matvec_n_k(pool, xf.data(), static_cast<const float*>(w), m, k, n, y);
  if (out_in && w_bf16) matvec_n_k(pool, xf.data(), static_cast<const bf16*>(w), m, k, n, y);
  if (!out_in && !w_bf16) matvec_k_n(pool, xf, static_cast<const float*>(w), m, k, n, y);
  if (!out_in && w_bf16) matvec_k_n(pool, xf, static_cast<const bf16*>(w), m, k, n, y);
}

// y (m, n) = x (m, k) · Wᵀ for W as Q8_0: int8 q (n, k) and float16 scales (n, k / 32), each thread's band
// of rows read in sub-bands, as matvec_n_k reads it.
inline void matvec_q8_0(const Pool& pool, Floats x, const int8_t* q, const f16* scales, int64_t m, int64_t k,
                        int64_t n, Floats y) {
  std::vector<float> xf = widened(x, m * k), row(n);
  int64_t count = workers_for(pool, n * k), blocks = k / 32;
  for (int64_t t = 0; t < m; ++t) {
    Int16Blocks xt = to_int16_blocks(xf.data() + t * k, k);
    parallel(pool, count, [&](int64_t id) {
      auto [begin, end] = part(n, 16, id, count);
      std::vector<float> scale(STREAMS * blocks);
      in_sub_bands(begin, end, [&](auto streams, const int64_t* js) {
        constexpr int S = decltype(streams)::value;
        const int8_t* rows[S];
        const f16* row_scales[S];
        float sums[S];
        for (int s = 0; s < S; ++s) rows[s] = q + js[s] * k, row_scales[s] = scales + js[s] * blocks;
        dot_q8_0_rows<S>(xt, rows, row_scales, k, scale.data(), sums);
        for (int s = 0; s < S; ++s) row[js[s]] = sums[s];
      });
      store(y, t * n, row.data(), begin, end);
    });
  }
}

}  // namespace llama_tf
