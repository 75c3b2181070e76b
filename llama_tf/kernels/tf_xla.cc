// The XLA FFI targets of matvec.cc and attention.cc registered with TensorFlow's own XLA, on its CPU
// platform ("Host"), when TensorFlow loads this library. TensorFlow's framework library exports XLA's FFI
// API (`xla::ffi::GetXlaFfiApi`), so a step that TensorFlow compiles with XLA (`jit_compile`) reaches the
// same handlers that JAX calls: each product is a one-operation StableHLO module (a `custom_call` to the
// target) run by TensorFlow's `XlaCallModule` op, which XLA inlines into the step (`kernels.xla_step()`).
#include "xla/ffi/api/ffi.h"

namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();  // libtensorflow_framework's
}

extern "C" {
XLA_FFI_Error* llama_tf_matvec(XLA_FFI_CallFrame*);
XLA_FFI_Error* llama_tf_matvec_q8_0(XLA_FFI_CallFrame*);
XLA_FFI_Error* llama_tf_matvec_blocks(XLA_FFI_CallFrame*);
XLA_FFI_Error* llama_tf_attend_one(XLA_FFI_CallFrame*);
}

XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "llama_tf_matvec", "Host", llama_tf_matvec);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "llama_tf_matvec_q8_0", "Host", llama_tf_matvec_q8_0);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "llama_tf_matvec_blocks", "Host", llama_tf_matvec_blocks);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "llama_tf_attend_one", "Host", llama_tf_attend_one);
