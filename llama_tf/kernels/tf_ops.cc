// The matrix-vector products (matvec.h) as TensorFlow ops, for the TensorFlow graph's one-token decode
// steps (XLA cannot call them: under jit_compile the products stay XLA's):
//
//   LlamaTfMatvec     x (m, k) float32 or bfloat16; W float32 or bfloat16, (k, n), or (n, k) with out_in
//   LlamaTfMatvecQ80  x (m, k); int8 W (n, k); float16 scales (n, k/32)
//   LlamaTfMatvecBlocks  x (m, k); uint8 W (n, bytes of a row) in llama.cpp's blocks of type ggml_type (blocks.h)
//
// y (m, n) is in x's type. They run on TensorFlow's intra-op thread pool, with the calling thread.
#include "blocks.h"
#include "matvec.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

using namespace tensorflow;

namespace {

// y (m, n): x's rows by W's outputs (dimension `outputs` of the input `w`).
absl::Status product_shape(shape_inference::InferenceContext* c, int w, int outputs) {
  shape_inference::ShapeHandle x, weights;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(w), 2, &weights));
  c->set_output(0, c->Matrix(c->Dim(x, 0), c->Dim(weights, outputs)));
  return absl::OkStatus();
}

llama_tf::Pool pool_of(OpKernelContext* context) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  return {[workers](std::function<void()> task) { workers->Schedule(std::move(task)); }, workers->NumThreads()};
}

llama_tf::Floats floats(const Tensor& t) { return {const_cast<char*>(t.tensor_data().data()), t.dtype() == DT_BFLOAT16}; }

}  // namespace

REGISTER_OP("LlamaTfMatvec")
    .Input("x: T")
    .Input("w: W")
    .Output("y: T")
    .Attr("T: {float, bfloat16}")
    .Attr("W: {float, bfloat16}")
    .Attr("out_in: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      bool out_in;
      TF_RETURN_IF_ERROR(c->GetAttr("out_in", &out_in));
      return product_shape(c, 1, out_in ? 0 : 1);
    });

REGISTER_OP("LlamaTfMatvecQ80")
    .Input("x: T")
    .Input("q: int8")
    .Input("scales: half")
    .Output("y: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return product_shape(c, 1, 0); });

REGISTER_OP("LlamaTfMatvecBlocks")
    .Input("x: T")
    .Input("w: uint8")
    .Output("y: T")
    .Attr("T: {float, bfloat16}")
    .Attr("ggml_type: int")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return product_shape(c, 1, 0); });

class MatvecOp : public OpKernel {
 public:
  explicit MatvecOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("out_in", &out_in_)); }

  void Compute(OpKernelContext* c) override {
    const Tensor &x = c->input(0), &w = c->input(1);
    OP_REQUIRES(c, x.dims() == 2 && w.dims() == 2, errors::InvalidArgument("LlamaTfMatvec: x (m, k) and W, 2-D"));
    int64_t m = x.dim_size(0), k = x.dim_size(1), n = w.dim_size(out_in_ ? 0 : 1);
    const char* why = llama_tf::matvec_mismatch(k, w.dim_size(0), w.dim_size(1), out_in_);
    OP_REQUIRES(c, !why, errors::InvalidArgument("LlamaTfMatvec: ", why));
    Tensor* y;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({m, n}), &y));
    llama_tf::matvec(pool_of(c), floats(x), w.tensor_data().data(), w.dtype() == DT_BFLOAT16, out_in_, m, k, n,
                     floats(*y));
  }

 private:
  bool out_in_;
};

class MatvecQ8_0Op : public OpKernel {
 public:
  explicit MatvecQ8_0Op(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* c) override {
    const Tensor &x = c->input(0), &q = c->input(1), &scales = c->input(2);
    OP_REQUIRES(c, x.dims() == 2 && q.dims() == 2 && scales.dims() == 2,
                errors::InvalidArgument("LlamaTfMatvecQ80: x (m, k), int8 W (n, k), float16 scales (n, k/32)"));
    int64_t m = x.dim_size(0), k = x.dim_size(1), n = q.dim_size(0);
    const char* why = llama_tf::q8_0_mismatch(k, n, q.dim_size(1), scales.dim_size(0), scales.dim_size(1));
    OP_REQUIRES(c, !why, errors::InvalidArgument("LlamaTfMatvecQ80: ", why));
    Tensor* y;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({m, n}), &y));
    llama_tf::matvec_q8_0(pool_of(c), floats(x), reinterpret_cast<const int8_t*>(q.tensor_data().data()),
                          reinterpret_cast<const llama_tf::f16*>(scales.tensor_data().data()), m, k, n, floats(*y));
  }
};

class MatvecBlocksOp : public OpKernel {
 public:
  explicit MatvecBlocksOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("ggml_type", &type_)); }

  void Compute(OpKernelContext* c) override {
    const Tensor &x = c->input(0), &w = c->input(1);
    OP_REQUIRES(c, x.dims() == 2 && w.dims() == 2,
                errors::InvalidArgument("LlamaTfMatvecBlocks: x (m, k), uint8 W (n, bytes of a row)"));
    int64_t m = x.dim_size(0), k = x.dim_size(1), n = w.dim_size(0);
    const char* why = llama_tf::blocks_mismatch(type_, k, w.dim_size(1));
    OP_REQUIRES(c, !why, errors::InvalidArgument("LlamaTfMatvecBlocks: ", why));
    Tensor* y;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({m, n}), &y));
    llama_tf::matvec_blocks(pool_of(c), floats(x), reinterpret_cast<const uint8_t*>(w.tensor_data().data()), type_, m,
                            k, n, floats(*y));
  }

 private:
  int type_;
};

REGISTER_KERNEL_BUILDER(Name("LlamaTfMatvec").Device(DEVICE_CPU), MatvecOp);
REGISTER_KERNEL_BUILDER(Name("LlamaTfMatvecQ80").Device(DEVICE_CPU), MatvecQ8_0Op);
REGISTER_KERNEL_BUILDER(Name("LlamaTfMatvecBlocks").Device(DEVICE_CPU), MatvecBlocksOp);
