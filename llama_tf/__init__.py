"""Meta's LLaMA rebuilt layer by layer in Keras 3 on TensorFlow, from notebooks

Modules:

- `llama_tf.checkpoint`: Reading LLaMA checkpoints into a model built by `build_llama`.
- `llama_tf.evaluation`: How well a model predicts a text: negative log-likelihood per character, and perplexity.
- `llama_tf.train`: Train a small LLaMA with Keras, the way the shipped default model was trained."""

# The docstring above is written by nbdev-export. Names below are imported on first use, so that the
# Keras layers (`llama_tf.model` and below) also load on another Keras backend without TensorFlow.
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Tokenizer": "tokenizer", "show_tokens": "tokenizer",
    "RMSNorm": "rms_norm",
    "FeedForward": "feed_forward", "ffn_hidden_dim": "feed_forward",
    "Attention": "attention", "apply_rope": "attention", "causal_mask": "attention", "rope_angles": "attention",
    "visible_keys": "attention", "write_slots": "attention", "tiled_attention": "tiled_attention",
    "TransformerBlock": "transformer_block",
    "TokenEmbedding": "model", "build_llama": "model",
    "LlamaConfig": "config",
    "CheckpointError": "checkpoint",
    "LLM": "llm", "load": "llm", "DEFAULT_WEIGHTS": "llm",
    "evaluate": "evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"llama_tf.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'llama_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
