"""A LLaMA model's structure, named once: its tensors under Meta's names with their shapes, and which
projections model parallelism splits along their outputs or their inputs.

Every block holds the projections `attention.{wq,wk,wv,wo}` and `feed_forward.{w1,w2,w3}` and the norms
`attention_norm` and `ffn_norm`; around the blocks sit `tok_embeddings`, `norm` and (unless tied to the
embedding) `output`. The Keras model (`build_llama`, notebook 07) names its layers the same way, so the
formats' name maps and shape checks, loading (`model_variables`) and the distribution layout all read
this table. A leaf: imports nothing of llama_tf."""

from __future__ import annotations

__all__ = ["BLOCK_PROJECTIONS", "BLOCK_NORMS", "SPLIT_INPUTS", "block_shapes", "tensor_shapes"]

# Sub-layer -> its projections, in Meta's order.
BLOCK_PROJECTIONS = {"attention": ("wq", "wk", "wv", "wo"), "feed_forward": ("w1", "w2", "w3")}
BLOCK_NORMS = ("attention_norm", "ffn_norm")
# Meta's row-parallel projections: model parallelism splits their inputs. Every other matrix
# (column-parallel) is split along its outputs.
SPLIT_INPUTS = ("attention.wo", "feed_forward.w2")


def block_shapes(dim: int, hidden_dim: int, kv_dim: int) -> dict[str, tuple[int, ...]]:
    """A block's tensors (`attention.wq`, …, `ffn_norm`) with their shapes, matrices in Meta's (out, in)
    orientation, for a model of width `dim`, feed-forward width `hidden_dim` and key/value width `kv_dim`
    (key/value heads × head size)."""
    kv, hidden = kv_dim, hidden_dim
    return {"attention.wq": (dim, dim), "attention.wk": (kv, dim), "attention.wv": (kv, dim),
            "attention.wo": (dim, dim), "feed_forward.w1": (hidden, dim), "feed_forward.w2": (dim, hidden),
            "feed_forward.w3": (hidden, dim), "attention_norm": (dim,), "ffn_norm": (dim,)}


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    "Every tensor a model of `config` has, under Meta's names, with its shape in Meta's (out, in) orientation."
    shapes = {"tok_embeddings.weight": (config.vocab_size, config.dim), "norm.weight": (config.dim,)}
    if not config.tie_embeddings:
        shapes["output.weight"] = (config.vocab_size, config.dim)
    per_layer = block_shapes(config.dim, config.hidden_dim, config.n_kv_heads * config.head_dim)
    for i in range(config.n_layers):
        shapes.update({f"layers.{i}.{kind}.weight": shape for kind, shape in per_layer.items()})
    return shapes
