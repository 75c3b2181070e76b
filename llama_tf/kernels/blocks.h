// Matrix-vector products with weights held as llama.cpp's 4-, 5- and 6-bit blocks, read as GGUF stores them:
//
//   Q4_0  32 weights: float16 d, 16 bytes of nibbles                    w = d · (q − 8)
//   Q5_0  32 weights: float16 d, 32 high bits, 16 bytes of nibbles      w = d · (q − 16)
//   Q5_1  32 weights: float16 d and m, 32 high bits, nibbles            w = d · q + m
//   Q4_K  256 weights: float16 d and dmin, eight 6-bit scales and mins (12 bytes), 128 bytes of nibbles;
//         sub-block j of 32: w = d · scale_j · q − dmin · min_j
//   Q5_K  as Q4_K, with a fifth bit of each q in 32 more bytes
//   Q6_K  256 weights: 128 bytes of low nibbles, 64 of high bit pairs, sixteen int8 scales, float16 d;
//         sub-block j of 16: w = d · scale_j · (q − 32)
//
// (Q8_0 has its own loop in matvec.h.) The types are named by GGML's numbers, as GGUF writes them. x is
// rounded once per call to int8 as llama.cpp rounds it (one scale max|x| / 127 per 32 values for the
// 32-weight types, Q8_0's; per 256 for the k-quants, Q8_K's), with the sum of each 16 rounded values.
// With AVX-512 VNNI each block's q are unpacked from its bits in registers and multiplied with x's int8
// four pairs at a time into exact int32 sums (vpdpbusd), then scaled in float32 per sub-block; a
// sub-block's minimum (or the constant that centres q) comes off as itself times the sum of x over the
// sub-block. Elsewhere a portable loop unpacks each block into int8 q with a scale and an offset per 16
// weights (w = scale · q − offset) and sums the same products.
#pragma once

#include "matvec.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace llama_tf {

enum BlockType : int { Q4_0 = 2, Q5_0 = 6, Q5_1 = 7, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

inline bool block_type(int type) {
  return type == Q4_0 || type == Q5_0 || type == Q5_1 || type == Q4_K || type == Q5_K || type == Q6_K;
}
constexpr int64_t block_weights(int type) { return type >= Q4_K ? 256 : 32; }
constexpr int64_t block_bytes(int type) {
  switch (type) {
    case Q4_0: return 18;
    case Q5_0: return 22;
    case Q5_1: return 24;
    case Q4_K: return 144;
    case Q5_K: return 176;
    case Q6_K: return 210;
  }
  return 0;
}

// One block unpacked: w[i] = scale[i / 16] · q[i] − offset[i / 16].
struct Unpacked {
  alignas(64) int8_t q[256];
  float scale[16], offset[16];
};

inline float f16_at(const uint8_t* p) {
  f16 h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return from_f16(h);
#endif
}

// Q4_K's and Q5_K's 6-bit scale and min of sub-block j from their 12 bytes (llama.cpp's get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* s, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63, min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

inline void unpack_32(int type, const uint8_t* b, Unpacked& u) {
  float d = f16_at(b), offset = 0.0f;
  const uint8_t* qs = b + 2;
  uint32_t high = 0;
  if (type == Q5_1) offset = -f16_at(b + 2), qs += 2;
  if (type != Q4_0) std::memcpy(&high, qs, 4), qs += 4;
  int bias = type == Q4_0 ? 8 : type == Q5_0 ? 16 : 0;
  for (int j = 0; j < 16; ++j) {
    int h0 = type == Q4_0 ? 0 : ((high >> j) << 4) & 0x10, h1 = type == Q4_0 ? 0 : (high >> (j + 12)) & 0x10;
    u.q[j] = int8_t(((qs[j] & 0xF) | h0) - bias);
    u.q[j + 16] = int8_t(((qs[j] >> 4) | h1) - bias);
  }
  u.scale[0] = u.scale[1] = d;
  u.offset[0] = u.offset[1] = offset;
}

inline void unpack_k(int type, const uint8_t* b, Unpacked& u) {
  if (type == Q6_K) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    float d = f16_at(b + 208);
    for (int n = 0; n < 2; ++n, ql += 64, qh += 32) {
      int8_t* q = u.q + 128 * n;
      for (int l = 0; l < 32; ++l) {
        q[l] = int8_t(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        q[l + 32] = int8_t(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        q[l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        q[l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    for (int g = 0; g < 16; ++g) u.scale[g] = d * scales[g], u.offset[g] = 0.0f;
    return;
  }
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *scales = b + 4, *qh = b + 16, *qs = type == Q5_K ? b + 48 : b + 16;
  for (int chunk = 0; chunk < 4; ++chunk, qs += 32) {   // 64 weights: sub-blocks 2·chunk and 2·chunk + 1
    int8_t* q = u.q + 64 * chunk;
    for (int l = 0; l < 32; ++l) {
      q[l] = int8_t(qs[l] & 0xF);
      q[l + 32] = int8_t(qs[l] >> 4);
    }
    if (type == Q5_K) {
      for (int l = 0; l < 32; ++l) {
        q[l] |= int8_t(((qh[l] >> (2 * chunk)) & 1) << 4);
        q[l + 32] |= int8_t(((qh[l] >> (2 * chunk + 1)) & 1) << 4);
      }
    }
    for (int half = 0; half < 2; ++half) {
      int scale, min, g = 4 * chunk + 2 * half;
      scale_min_k4(2 * chunk + half, scales, scale, min);
      u.scale[g] = u.scale[g + 1] = d * scale;
      u.offset[g] = u.offset[g + 1] = dmin * min;
    }
  }
}

// x rounded once per call to int8 as llama.cpp rounds it (Q8_0 for 32-weight blocks, Q8_K for 256): one
// scale d = max |x| / 127 per block of `group`, and the sum of each 16 rounded values (for the offsets).
struct RoundedX {
  std::vector<int8_t> q;      // k
  std::vector<float> d;       // k / group
  std::vector<int32_t> sums;  // k / 16
  std::vector<int32_t> sums32;  // k / 32: each 32's
};

inline RoundedX round_x(const float* x, int64_t k, int64_t group) {
  RoundedX out{std::vector<int8_t>(k), std::vector<float>(k / group), std::vector<int32_t>(k / 16),
               std::vector<int32_t>(k / 32)};
  for (int64_t b = 0; b < k / group; ++b) {
    float top = 0.0f;
    for (int64_t i = 0; i < group; ++i) top = std::max(top, std::fabs(x[group * b + i]));
    float d = top / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
    out.d[b] = d;
    for (int64_t i = 0; i < group; ++i) out.q[group * b + i] = int8_t(std::nearbyint(x[group * b + i] * inverse));
  }
  for (int64_t g = 0; g < k / 16; ++g) {
    int32_t sum = 0;
    for (int i = 0; i < 16; ++i) sum += out.q[16 * g + i];
    out.sums[g] = sum;
  }
  for (int64_t g = 0; g < k / 32; ++g) out.sums32[g] = out.sums[2 * g] + out.sums[2 * g + 1];
  return out;
}

// A float32 sum of products, kept in a vector where AVX-512 is there and added up once at the end.
struct Sum {
#if defined(__AVX512F__)
  __m512 lanes = _mm512_setzero_ps();
#endif
  float rest = 0.0f;
  float value() const {
#if defined(__AVX512F__)
    return rest + _mm512_reduce_add_ps(lanes);
#else
    return rest;
#endif
  }
};

// sum += Σ_i x_i · w_i over one block whose first weight is x's `start`: the block unpacked, then each 16
// products summed as integers (portable loops).
template <int TYPE>
inline void add_block_unpacked(const RoundedX& x, int64_t start, const uint8_t* block, Sum& sum) {
  constexpr int64_t weights = block_weights(TYPE);
  Unpacked u;
  if constexpr (weights == 32) unpack_32(TYPE, block, u);
  else unpack_k(TYPE, block, u);
  const int8_t* xq = x.q.data() + start;
  const int32_t* xsum = x.sums.data() + start / 16;
  float d = x.d[start / weights], total = 0.0f;
  for (int64_t i = 0; i < weights; i += 16) {
    int32_t whole = 0;
    for (int j = 0; j < 16; ++j) whole += int32_t(xq[i + j]) * u.q[i + j];
    total += u.scale[i / 16] * float(whole) - u.offset[i / 16] * float(xsum[i / 16]);
  }
  sum.rest += d * total;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// With AVX-512 VNNI: the weights' q, unsigned, unpacked from the block's bits in registers, multiplied with
// x's int8 four pairs at a time into int32 (vpdpbusd), then scaled in float32; a constant subtracted from
// q (Q4_0's 8, Q5_0's 16, Q6_K's 32) comes off as that constant times the sums of x.
inline __m256i bytes32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i nibbles_low(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
inline __m256i nibbles_high(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }
inline __m512i join(__m256i low, __m256i high) { return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1); }

// A Q4_K/Q5_K super-block's 12 bytes of 6-bit scales and mins as 16 bytes, the 8 scales then the 8 mins
// (llama.cpp's bit-parallel unpacking), into u.
inline void scales_and_mins(const uint8_t* packed, uint32_t u[4]) {
  std::memcpy(u, packed, 12);
  const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
  u[3] = ((u[2] >> 4) & low4) | (((u[1] >> 6) & low2) << 4);
  uint32_t mins4 = u[1] & low6;
  u[1] = (u[2] & low4) | (((u[0] >> 6) & low2) << 4);
  u[2] = mins4;
  u[0] &= low6;
}

// Half a Q6_K super-block, its 64 bytes of low nibbles ql and 32 of high bits qh, as its four runs of 32
// unsigned q (0..63): the low nibbles of ql's first 32 bytes, of its next 32, then their high nibbles, each
// with two more bits from qh (bits 0-1, 2-3, 4-5, 6-7).
inline void q6_k_runs(const uint8_t* ql, const uint8_t* qh, __m256i run[4]) {
  const __m256i three = _mm256_set1_epi8(3), l0 = bytes32(ql), l1 = bytes32(ql + 32), h = bytes32(qh);
  run[0] = _mm256_or_si256(nibbles_low(l0), _mm256_slli_epi16(_mm256_and_si256(h, three), 4));
  run[1] = _mm256_or_si256(nibbles_low(l1), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), three), 4));
  run[2] = _mm256_or_si256(nibbles_high(l0), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), three), 4));
  run[3] = _mm256_or_si256(nibbles_high(l1), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), three), 4));
}

// 16 int32 sums of four products of unsigned q (64 bytes) and x (64 int8), as float32.
inline __m512 quad_sums(__m512i q, const int8_t* x) {
  return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(x)));
}

template <int TYPE>
inline void add_block(const RoundedX& x, int64_t start, const uint8_t* b, Sum& sum) {
  const int8_t* xq = x.q.data() + start;
  const int32_t* xsum = x.sums.data() + start / 16;
  if constexpr (TYPE == Q4_0 || TYPE == Q5_0 || TYPE == Q5_1) {
    const uint8_t* qs = b + (TYPE == Q4_0 ? 2 : TYPE == Q5_0 ? 6 : 8);
    __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    __m256i q = nibbles_low(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed));
    if constexpr (TYPE != Q4_0) {   // bit i of the 32 high bits is weight i's fifth bit
      uint32_t high;
      std::memcpy(&high, b + (TYPE == Q5_0 ? 2 : 4), 4);
      q = _mm256_or_si256(q, _mm256_maskz_set1_epi8(high, 0x10));
    }
    __m256i dots = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
    float d = f16_at(b) * x.d[start / 32], xs = float(xsum[0] + xsum[1]);
    sum.lanes = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(dots)), _mm512_set1_ps(d), sum.lanes);
    if constexpr (TYPE == Q4_0) sum.rest -= 8.0f * d * xs;
    if constexpr (TYPE == Q5_0) sum.rest -= 16.0f * d * xs;
    if constexpr (TYPE == Q5_1) sum.rest += f16_at(b + 2) * x.d[start / 32] * xs;
  } else if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
    float dx = x.d[start / 256], d = f16_at(b) * dx, dmin = f16_at(b + 2) * dx;
    const uint8_t *scales = b + 4, *qs = b + (TYPE == Q5_K ? 48 : 16);
    __m256i high = TYPE == Q5_K ? bytes32(b + 16) : _mm256_setzero_si256(), one = _mm256_set1_epi8(1);
    uint32_t u[4];
    scales_and_mins(scales, u);
    __m128i both = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
    __m256 scale8 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(both)), _mm256_set1_ps(d));
    __m256i mins = _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(both, 8)),
                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sums32.data() + start / 32)));
    sum.lanes = _mm512_fnmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(mins)), _mm512_set1_ps(dmin), sum.lanes);
    __m512 all = _mm512_castps256_ps512(scale8);
    for (int chunk = 0; chunk < 4; ++chunk) {   // 64 weights: sub-blocks 2·chunk (low nibbles), 2·chunk + 1 (high)
      __m256i packed = bytes32(qs + 32 * chunk), low = nibbles_low(packed), up = nibbles_high(packed);
      if constexpr (TYPE == Q5_K) {
        low = _mm256_or_si256(low, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * chunk), one), 4));
        up = _mm256_or_si256(up, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * chunk + 1), one), 4));
      }
      __m512i pair = _mm512_set_epi32(2 * chunk + 1, 2 * chunk + 1, 2 * chunk + 1, 2 * chunk + 1, 2 * chunk + 1, 2 * chunk + 1,
                                      2 * chunk + 1, 2 * chunk + 1, 2 * chunk, 2 * chunk, 2 * chunk, 2 * chunk, 2 * chunk,
                                      2 * chunk, 2 * chunk, 2 * chunk);
      sum.lanes = _mm512_fmadd_ps(quad_sums(join(low, up), xq + 64 * chunk), _mm512_permutexvar_ps(pair, all), sum.lanes);
    }
  } else {   // Q6_K: two halves of 128 weights, four runs of 32 each, a scale per 16
    const uint8_t *ql = b, *qh = b + 128;
    __m512 scales = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)))),
                                  _mm512_set1_ps(f16_at(b + 208) * x.d[start / 256]));
    const __m512i first = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);   // lanes -> groups of 16
    for (int n = 0; n < 2; ++n, ql += 64, qh += 32) {
      __m256i run[4];
      q6_k_runs(ql, qh, run);
      __m512i groups = _mm512_add_epi32(first, _mm512_set1_epi32(8 * n));
      sum.lanes = _mm512_fmadd_ps(quad_sums(join(run[0], run[1]), xq + 128 * n), _mm512_permutexvar_ps(groups, scales), sum.lanes);
      groups = _mm512_add_epi32(groups, _mm512_set1_epi32(4));
      sum.lanes = _mm512_fmadd_ps(quad_sums(join(run[2], run[3]), xq + 128 * n + 64), _mm512_permutexvar_ps(groups, scales), sum.lanes);
    }
    __m512 sums = _mm512_cvtepi32_ps(_mm512_loadu_si512(xsum));   // the 16 groups' sums of x
    sum.lanes = _mm512_fnmadd_ps(_mm512_mul_ps(scales, _mm512_set1_ps(32.0f)), sums, sum.lanes);
  }
}

// Several rows of x (a short prompt) against one k-quant super-block: its q and scales unpacked into
// registers once, then multiplied with each row's 256 int8 (the unpacking, not the products, is most of a
// one-row block's work). q[c] holds weights 64c..64c+63; scale[c] the scale of each of dpbusd's 16 sums;
// offset the constant each group of 16 weights loses (Q4_K/Q5_K: dmin · min; Q6_K: 32 · scale).
struct KBlock {
  __m512i q[4];
  __m512 scale[4], offset;
};

template <int TYPE>
inline void unpack_kblock(const uint8_t* b, KBlock& u) {
  if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *scales = b + 4, *qs = b + (TYPE == Q5_K ? 48 : 16);
    __m256i high = TYPE == Q5_K ? bytes32(b + 16) : _mm256_setzero_si256(), one = _mm256_set1_epi8(1);
    uint32_t w[4];
    scales_and_mins(scales, w);
    __m512 both = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi32(int(w[3]), int(w[2]), int(w[1]), int(w[0]))));
    __m512 all = _mm512_mul_ps(both, _mm512_set1_ps(d));   // lanes 0-7: d · scale_j
    const __m512i mins = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);   // group g: min g / 2
    u.offset = _mm512_mul_ps(_mm512_permutexvar_ps(mins, both), _mm512_set1_ps(dmin));
    for (int chunk = 0; chunk < 4; ++chunk) {
      __m256i packed = bytes32(qs + 32 * chunk), low = nibbles_low(packed), up = nibbles_high(packed);
      if constexpr (TYPE == Q5_K) {
        low = _mm256_or_si256(low, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * chunk), one), 4));
        up = _mm256_or_si256(up, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * chunk + 1), one), 4));
      }
      u.q[chunk] = join(low, up);
      __m512i pair = _mm512_inserti64x4(_mm512_set1_epi32(2 * chunk), _mm256_set1_epi32(2 * chunk + 1), 1);
      u.scale[chunk] = _mm512_permutexvar_ps(pair, all);
    }
  } else {   // Q6_K
    const uint8_t *ql = b, *qh = b + 128;
    __m512 scales = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)))),
                                  _mm512_set1_ps(f16_at(b + 208)));
    const __m512i first = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (int n = 0; n < 2; ++n, ql += 64, qh += 32) {
      __m256i run[4];
      q6_k_runs(ql, qh, run);
      u.q[2 * n] = join(run[0], run[1]), u.q[2 * n + 1] = join(run[2], run[3]);
      __m512i groups = _mm512_add_epi32(first, _mm512_set1_epi32(8 * n));
      u.scale[2 * n] = _mm512_permutexvar_ps(groups, scales);
      u.scale[2 * n + 1] = _mm512_permutexvar_ps(_mm512_add_epi32(groups, _mm512_set1_epi32(4)), scales);
    }
    u.offset = _mm512_mul_ps(scales, _mm512_set1_ps(32.0f));
  }
}

// sums[t] += x_t · the block's 256 weights, for each of the m rows of x.
inline void add_kblock_rows(const KBlock& u, const RoundedX* xs, int64_t m, int64_t start, __m512* sums) {
  for (int64_t t = 0; t < m; ++t) {
    const int8_t* xq = xs[t].q.data() + start;
    __m512 block = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(xs[t].sums.data() + start / 16)), u.offset);
    block = _mm512_sub_ps(_mm512_setzero_ps(), block);
    for (int c = 0; c < 4; ++c) block = _mm512_fmadd_ps(quad_sums(u.q[c], xq + 64 * c), u.scale[c], block);
    sums[t] = _mm512_fmadd_ps(block, _mm512_set1_ps(xs[t].d[start / 256]), sums[t]);
  }
}

// out[t] = x_t · row for the m rows of x, the row's super-blocks unpacked once each.
template <int TYPE>
void dot_kblock_row(const std::vector<RoundedX>& xs, const uint8_t* row, int64_t k, float* out, int64_t stride) {
  std::vector<__m512> sums(xs.size(), _mm512_setzero_ps());
  KBlock u;
  for (int64_t start = 0, offset = 0; start < k; start += 256, offset += block_bytes(TYPE)) {
    unpack_kblock<TYPE>(row + offset, u);
    add_kblock_rows(u, xs.data(), int64_t(xs.size()), start, sums.data());
  }
  for (size_t t = 0; t < xs.size(); ++t) out[t * stride] = _mm512_reduce_add_ps(sums[t]);
}
constexpr bool several_rows_unpacked_once(int type) { return type == Q4_K || type == Q5_K || type == Q6_K; }
#else
template <int TYPE>
inline void add_block(const RoundedX& x, int64_t start, const uint8_t* block, Sum& sum) {
  add_block_unpacked<TYPE>(x, start, block, sum);
}
template <int TYPE>
void dot_kblock_row(const std::vector<RoundedX>&, const uint8_t*, int64_t, float*, int64_t) {}
constexpr bool several_rows_unpacked_once(int) { return false; }
#endif

inline const char* blocks_mismatch(int type, int64_t k, int64_t row_bytes) {
  if (!block_type(type)) return "unknown block type (GGML's Q4_0 2, Q5_0 6, Q5_1 7, Q4_K 12, Q5_K 13, Q6_K 14)";
  if (k % block_weights(type)) return "x's width is not a whole number of the type's blocks";
  return row_bytes == k / block_weights(type) * block_bytes(type) ? nullptr
                                                                    : "W's rows do not hold k weights in the type's blocks";
}

// out[s] = x · rows[s] for S rows of blocks of TYPE (k weights each), each block of the S read side by side.
template <int TYPE, int S>
void dot_block_rows(const RoundedX& x, const uint8_t* const* rows, int64_t k, float* out) {
  constexpr int64_t weights = block_weights(TYPE), bytes = block_bytes(TYPE);
  Sum sums[S];
  for (int64_t start = 0, offset = 0; start < k; start += weights, offset += bytes)
    for (int s = 0; s < S; ++s) add_block<TYPE>(x, start, rows[s] + offset, sums[s]);
  for (int s = 0; s < S; ++s) out[s] = sums[s].value();
}

// y (m, n) = x (m, k) · Wᵀ for W's n rows stored as blocks of TYPE (k / block_weights · block_bytes bytes
// each): each thread a band of rows, read in sub-bands side by side (matvec_n_k), each sub-band's rows
// multiplied with every row of x while they are in the cache: W comes from memory once for all m rows (a
// short prompt costs m times the arithmetic of one token, not m times its memory traffic). With several
// rows of x, a k-quant row's super-blocks are unpacked once each for all of them (dot_kblock_row).
template <int TYPE>
void matvec_blocks_of(const Pool& pool, const std::vector<float>& xf, const uint8_t* w, int64_t m, int64_t k,
                      int64_t n, Floats y) {
  const int64_t row_bytes = k / block_weights(TYPE) * block_bytes(TYPE);
  int64_t count = workers_for(pool, m * n * k);
  std::vector<RoundedX> xs;
  for (int64_t t = 0; t < m; ++t) xs.push_back(round_x(xf.data() + t * k, k, block_weights(TYPE)));
  std::vector<float> out(m * n);
  parallel(pool, count, [&](int64_t id) {
    auto [begin, end] = part(n, 16, id, count);
    if (m > 1 && several_rows_unpacked_once(TYPE)) {
      for (int64_t j = begin; j < end; ++j) dot_kblock_row<TYPE>(xs, w + j * row_bytes, k, &out[j], n);
      for (int64_t t = 0; t < m; ++t) store(y, t * n, out.data() + t * n, begin, end);
      return;
    }
    in_sub_bands(begin, end, [&](auto streams, const int64_t* js) {
      constexpr int S = decltype(streams)::value;
      const uint8_t* rows[S];
      float sums[S];
      for (int s = 0; s < S; ++s) rows[s] = w + js[s] * row_bytes;
      for (int64_t t = 0; t < m; ++t) {
        dot_block_rows<TYPE, S>(xs[t], rows, k, sums);
        for (int s = 0; s < S; ++s) out[t * n + js[s]] = sums[s];
      }
    });
    for (int64_t t = 0; t < m; ++t) store(y, t * n, out.data() + t * n, begin, end);
  });
}

inline void matvec_blocks(const Pool& pool, Floats x, const uint8_t* w, int type, int64_t m, int64_t k, int64_t n,
                          Floats y) {
  std::vector<float> xf = widened(x, m * k);
  switch (type) {
    case Q4_0: return matvec_blocks_of<Q4_0>(pool, xf, w, m, k, n, y);
    case Q5_0: return matvec_blocks_of<Q5_0>(pool, xf, w, m, k, n, y);
    case Q5_1: return matvec_blocks_of<Q5_1>(pool, xf, w, m, k, n, y);
    case Q4_K: return matvec_blocks_of<Q4_K>(pool, xf, w, m, k, n, y);
    case Q5_K: return matvec_blocks_of<Q5_K>(pool, xf, w, m, k, n, y);
    case Q6_K: return matvec_blocks_of<Q6_K>(pool, xf, w, m, k, n, y);
  }
}

}  // namespace llama_tf
