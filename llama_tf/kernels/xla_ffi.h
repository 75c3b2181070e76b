// The JAX side of llama_tf's kernels: XLA's FFI types, and its buffers and thread pool as the loops take
// them (common.h's `Floats` and `Pool`).
#pragma once

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace llama_tf {

namespace ffi = xla::ffi;

inline bool float_type(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; }

inline Floats floats(ffi::AnyBuffer buffer) {
  return {buffer.untyped_data(), buffer.element_type() == ffi::DataType::BF16};
}

// `pool` must outlive the result: the handler's argument, used within the call.
inline Pool pool_of(ffi::ThreadPool& pool) {
  return {[&pool](std::function<void()> task) { pool.Schedule(std::move(task)); }, pool.num_threads()};
}

}  // namespace llama_tf
