// The matrix-vector products (matvec.h) as XLA FFI targets, for JAX:
//
//   llama_tf_matvec       x (m, k); W float32 or bfloat16, (k, n), or (n, k) with the attribute out_in
//   llama_tf_matvec_q8_0  x (m, k); int8 W (n, k); float16 scales (n, k/32)
//   llama_tf_matvec_blocks  x (m, k); uint8 W (n, bytes of a row) in llama.cpp's blocks of the attribute
//                         ggml_type (blocks.h: Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)
//
// x and y are float32 or bfloat16 (y in x's type).
#include "blocks.h"
#include "matvec.h"
#include "xla_ffi.h"

using namespace llama_tf;

namespace {

ffi::Error MatVec(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                  bool out_in) {
  auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || !float_type(x.element_type()) || !float_type(w.element_type()) ||
      y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("llama_tf_matvec: x (m, k) and W of float32 or bfloat16");
  if (const char* why = matvec_mismatch(xd[1], wd[0], wd[1], out_in))
    return ffi::Error::InvalidArgument(std::string("llama_tf_matvec: ") + why);
  matvec(pool_of(pool), floats(x), w.untyped_data(), w.element_type() == ffi::DataType::BF16, out_in, xd[0], xd[1],
         out_in ? wd[0] : wd[1], floats(*y));
  return ffi::Error::Success();
}

ffi::Error MatVecQ8_0(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer q, ffi::AnyBuffer scales,
                      ffi::Result<ffi::AnyBuffer> y) {
  auto xd = x.dimensions(), qd = q.dimensions(), sd = scales.dimensions();
  if (xd.size() != 2 || qd.size() != 2 || sd.size() != 2 || !float_type(x.element_type()) ||
      q.element_type() != ffi::DataType::S8 || scales.element_type() != ffi::DataType::F16 ||
      y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("llama_tf_matvec_q8_0: x (m, k), int8 W (n, k), float16 scales (n, k/32)");
  if (const char* why = q8_0_mismatch(xd[1], qd[0], qd[1], sd[0], sd[1]))
    return ffi::Error::InvalidArgument(std::string("llama_tf_matvec_q8_0: ") + why);
  matvec_q8_0(pool_of(pool), floats(x), static_cast<const int8_t*>(q.untyped_data()),
              static_cast<const f16*>(scales.untyped_data()), xd[0], xd[1], qd[0], floats(*y));
  return ffi::Error::Success();
}

ffi::Error MatVecBlocks(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                        int32_t ggml_type) {
  auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || !float_type(x.element_type()) || w.element_type() != ffi::DataType::U8 ||
      y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("llama_tf_matvec_blocks: x (m, k) float32 or bfloat16, uint8 W (n, bytes)");
  if (const char* why = blocks_mismatch(ggml_type, xd[1], wd[1]))
    return ffi::Error::InvalidArgument(std::string("llama_tf_matvec_blocks: ") + why);
  matvec_blocks(pool_of(pool), floats(x), static_cast<const uint8_t*>(w.untyped_data()), ggml_type, xd[0], xd[1],
                wd[0], floats(*y));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(llama_tf_matvec, MatVec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("out_in"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(llama_tf_matvec_q8_0, MatVecQ8_0,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(llama_tf_matvec_blocks, MatVecBlocks,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("ggml_type"));
