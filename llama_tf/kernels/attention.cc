// Attention for one-token decode steps: each row's new key and value go into the cache, in place, and its
// query attends over the slots that row uses, start..index, read in the cache's own type.
//
//   llama_tf_attend_one   q (batch, 1, heads, head_dim); k, v (batch, kv_heads, 1, head_dim); the cache's
//                         keys and values (batch, kv_heads, slots, head_dim), which are also its second
//                         and third results (XLA aliases them, so the cache is never copied); index, the
//                         slot of the new token (int32); start (batch,), the slot where each row's tokens
//                         begin (int32). Returns softmax(q kᵀ / √head_dim) v over slots
//                         min(start, index)..index, (batch, 1, heads, head_dim) in q's type.
//
// Grouped-query heads: query heads g·r .. g·r + r - 1 share key/value head g (r = heads / kv_heads), so
// one thread reads a group's keys and values once for all of them. Scores and sums are float32 for float32
// and bfloat16 alike. Under XLA the same step wrote the new slot by a fusion that it duplicated for the
// attention that reads it, and so copied every layer's whole cache twice per token.
#include <cmath>

#include "xla_ffi.h"

using namespace llama_tf;

namespace {

// y += a · row for a row of n values.
template <class T>
void add_scaled(float a, const T* row, int64_t n, float* y) {
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 scale = _mm512_set1_ps(a);
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(load16(row + i), scale, _mm512_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * widen(row[i]);
}

inline float narrow(float value, float) { return value; }
inline bf16 narrow(float value, bf16) { return to_bf16(value); }

template <class T>
void attend(const Pool& pool, const T* q, const T* k, const T* v, T* keys, T* values, int32_t index,
            const int32_t* start, int64_t batch, int64_t heads, int64_t kv_heads, int64_t slots, int64_t dim, T* out) {
  int64_t repeats = heads / kv_heads, groups = batch * kv_heads;
  int64_t count = std::min(groups, workers_for(pool, groups * (index + 1) * dim * 2));
  float root = std::sqrt(float(dim));
  parallel(pool, count, [&](int64_t id) {
    auto [first, last] = part(groups, 1, id, count);
    std::vector<float> query(dim), scores(index + 1), sum(dim);
    for (int64_t group = first; group < last; ++group) {
      int64_t row = group / kv_heads, g = group % kv_heads;
      T* group_keys = keys + group * slots * dim;
      T* group_values = values + group * slots * dim;
      std::memcpy(group_keys + index * dim, k + group * dim, dim * sizeof(T));   // the new slot
      std::memcpy(group_values + index * dim, v + group * dim, dim * sizeof(T));
      int64_t begin = std::clamp<int64_t>(start[row], 0, index), used = index + 1 - begin;
      for (int64_t r = 0; r < repeats; ++r) {
        int64_t head = g * repeats + r;
        const T* q_head = q + (row * heads + head) * dim;
        for (int64_t d = 0; d < dim; ++d) query[d] = widen(q_head[d]);
        float top = -INFINITY, total = 0.0f;
        for (int64_t j = 0; j < used; ++j) {
          scores[j] = dot(query.data(), group_keys + (begin + j) * dim, dim) / root;
          top = std::max(top, scores[j]);
        }
        for (int64_t j = 0; j < used; ++j) total += scores[j] = std::exp(scores[j] - top);
        std::fill(sum.begin(), sum.end(), 0.0f);
        for (int64_t j = 0; j < used; ++j) add_scaled(scores[j] / total, group_values + (begin + j) * dim, dim, sum.data());
        T* out_head = out + (row * heads + head) * dim;
        for (int64_t d = 0; d < dim; ++d) out_head[d] = narrow(sum[d], T());
      }
    }
  });
}

ffi::Error AttendOne(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer keys,
                     ffi::AnyBuffer values, ffi::Buffer<ffi::S32> index, ffi::Buffer<ffi::S32> start,
                     ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> keys_out,
                     ffi::Result<ffi::AnyBuffer> values_out) {
  auto qd = q.dimensions(), kd = k.dimensions(), cd = keys.dimensions();
  ffi::DataType type = q.element_type();
  if (qd.size() != 4 || kd.size() != 4 || cd.size() != 4 || !float_type(type) || k.element_type() != type ||
      v.element_type() != type || keys.element_type() != type || values.element_type() != type)
    return ffi::Error::InvalidArgument("llama_tf_attend_one: q, k, v and the cache, 4-D, of one float type");
  int64_t batch = qd[0], heads = qd[2], dim = qd[3], kv_heads = kd[1], slots = cd[2];
  bool shapes = qd[1] == 1 && kd[0] == batch && kd[2] == 1 && kd[3] == dim && v.dimensions() == kd &&
                cd[0] == batch && cd[1] == kv_heads && cd[3] == dim && values.dimensions() == cd &&
                kv_heads > 0 && heads % kv_heads == 0 && start.element_count() == batch && index.element_count() == 1;
  if (!shapes) return ffi::Error::InvalidArgument("llama_tf_attend_one: shapes disagree");
  int32_t slot = index.typed_data()[0];
  if (slot < 0 || slot >= slots) return ffi::Error::InvalidArgument("llama_tf_attend_one: index outside the cache");
  size_t bytes = keys.size_bytes();
  if (keys_out->untyped_data() != keys.untyped_data()) std::memcpy(keys_out->untyped_data(), keys.untyped_data(), bytes);
  if (values_out->untyped_data() != values.untyped_data())
    std::memcpy(values_out->untyped_data(), values.untyped_data(), bytes);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    attend(pool_of(pool), static_cast<const T*>(q.untyped_data()), static_cast<const T*>(k.untyped_data()),
           static_cast<const T*>(v.untyped_data()), static_cast<T*>(keys_out->untyped_data()),
           static_cast<T*>(values_out->untyped_data()), slot, start.typed_data(), batch, heads, kv_heads, slots, dim,
           static_cast<T*>(out->untyped_data()));
  };
  if (type == ffi::DataType::F32) run(float());
  else run(bf16());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(llama_tf_attend_one, AttendOne,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
