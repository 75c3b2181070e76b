// Matrix-vector products for one-token decode steps: y (m, n) = x (m, k) · Wᵀ, read at memory speed.
//
// A decode step reads every weight once and does two flops with it, so its speed is the speed at which
// the weights stream from memory. These loops read each weight once, in the order it lies in memory, on
// every core (the framework's CPU thread pool, with the calling thread), and keep the sums in float32
// whatever the weights' type:
//
//   matvec       W float32 or bfloat16, stored (k, n) (a Keras Dense kernel: each input's row of weights
//                is added into all n outputs) or (n, k) (an embedding table used as the output
//                projection: one dot product per output)
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

// Rows are summed one at a time while x fits the first-level cache, four at a time sharing each load of x
// when it does not. Measured on Zen 5: rows of 768 to 5632 weights read at 26-35 GB/s one by one (a
// thread's band of rows is then one sequential stream), rows of 768 at 17 four by four (four short
// streams); rows of 12288 at 22 one by one (x re-read from the second level for every row) and at 25-31
// four by four.
constexpr int64_t LONG_ROW = 8192;

// Σ_blocks d_x · d_w · Σ_32 x · q for one row of a Q8_0 matrix (k a multiple of 32): four blocks at a
// time, each into its own sum, so the additions do not wait on each other.
inline float dot_q8_0(const Int16Blocks& x, const int8_t* q, const f16* scales, int64_t k) {
  int64_t blocks = k / 32, b = 0;
  float sum = 0.0f;
#if defined(__AVX512BW__)
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (; b + 4 <= blocks; b += 4) {
    __m128 both = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + b))),
                             _mm_loadu_ps(x.d.data() + b));
    __m512 four = _mm512_castps128_ps512(both);
    for (int u = 0; u < 4; ++u) {
      __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * (b + u))));
      __m512i pairs = _mm512_madd_epi16(w, _mm512_loadu_si512(x.q.data() + 32 * (b + u)));
      acc[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pairs), _mm512_permutexvar_ps(_mm512_set1_epi32(u), four), acc[u]);
    }
  }
  sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#endif
  for (; b < blocks; ++b) sum += from_f16(scales[b]) * x.d[b] * float(block_sum(x.q.data() + 32 * b, q + 32 * b));
  return sum;
}

// Each row's float16 scales as float32, into `scale` (k / 32 per row).
inline void widen_scales(const f16* scales, int64_t blocks, int rows, float* scale) {
  for (int r = 0; r < rows; ++r) {
    int64_t b = 0;
#if defined(__AVX512F__)
    for (; b + 16 <= blocks; b += 16)
      _mm512_storeu_ps(scale + r * blocks + b,
                       _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + r * blocks + b))));
#endif
    for (; b < blocks; ++b) scale[r * blocks + b] = from_f16(scales[r * blocks + b]);
  }
}

// out[r] = the same for SHARED_ROWS consecutive rows, which share each load of x (rows of LONG_ROW
// weights or more). `scale` is scratch for SHARED_ROWS · k / 32 floats.
constexpr int SHARED_ROWS = 4;

inline void dot_q8_0_rows(const Int16Blocks& x, const int8_t* q, const f16* scales, int64_t k, float* scale, float* out) {
  int64_t blocks = k / 32, b = 0;
  widen_scales(scales, blocks, SHARED_ROWS, scale);
  for (int r = 0; r < SHARED_ROWS; ++r) out[r] = 0.0f;
#if defined(__AVX512BW__)
  __m512 acc[SHARED_ROWS];
  for (int r = 0; r < SHARED_ROWS; ++r) acc[r] = _mm512_setzero_ps();
  for (; b < blocks; ++b) {
    __m512i xb = _mm512_loadu_si512(x.q.data() + 32 * b);
    for (int r = 0; r < SHARED_ROWS; ++r) {
      const int8_t* block = q + r * k + 32 * b;
      if (b % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(block) + SHARED_ROWS * k, _MM_HINT_T0);   // the next rows
      __m512i pairs = _mm512_madd_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block))), xb);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pairs), _mm512_set1_ps(scale[r * blocks + b] * x.d[b]), acc[r]);
    }
  }
  for (int r = 0; r < SHARED_ROWS; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
#endif
  for (; b < blocks; ++b)
    for (int r = 0; r < SHARED_ROWS; ++r)
      out[r] += scale[r * blocks + b] * x.d[b] * float(block_sum(x.q.data() + 32 * b, q + r * k + 32 * b));
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

// y (m, n) = x · Wᵀ, W (n, k): one dot product per output, each thread a contiguous band of rows (one
// sequential stream, which the hardware prefetches well even where rows are short).
template <class X, class W>
void matvec_n_k(const Pool& pool, const X* x, const W* w, int64_t m, int64_t k, int64_t n, Floats y) {
  int64_t count = workers_for(pool, n * k);
  std::vector<float> row(n);
  for (int64_t t = 0; t < m; ++t) {
    parallel(pool, count, [&](int64_t id) {
      auto [begin, end] = part(n, 16, id, count);
      for (int64_t j = begin; j < end; ++j) row[j] = dot(x + t * k, w + j * k, k);
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
// and W (n, k) are both bfloat16, the pairs are multiplied as they are (`dot` of two bfloat16 arrays).
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

// y (m, n) = x (m, k) · Wᵀ for W as Q8_0: int8 q (n, k) and float16 scales (n, k / 32).
inline void matvec_q8_0(const Pool& pool, Floats x, const int8_t* q, const f16* scales, int64_t m, int64_t k,
                        int64_t n, Floats y) {
  std::vector<float> xf = widened(x, m * k), row(n);
  int64_t count = workers_for(pool, n * k);
  for (int64_t t = 0; t < m; ++t) {
    Int16Blocks xt = to_int16_blocks(xf.data() + t * k, k);
    parallel(pool, count, [&](int64_t id) {
      auto [begin, end] = part(n, 16, id, count);
      int64_t j = begin;
      if (k >= LONG_ROW) {
        std::vector<float> scale(SHARED_ROWS * (k / 32));
        for (; j + SHARED_ROWS <= end; j += SHARED_ROWS)
          dot_q8_0_rows(xt, q + j * k, scales + j * (k / 32), k, scale.data(), row.data() + j);
      }
      for (; j < end; ++j) row[j] = dot_q8_0(xt, q + j * k, scales + j * (k / 32), k);
      store(y, t * n, row.data(), begin, end);
    });
  }
}

}  // namespace llama_tf
