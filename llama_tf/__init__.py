"""Meta's LLaMA rebuilt layer by layer in Keras 3 on TensorFlow, from notebooks

Modules:

- `llama_tf.checkpoint`: Reading LLaMA checkpoints into a model built by `build_llama`."""

__version__ = "0.1.0"

from llama_tf.attention import Attention, apply_rope, causal_mask, rope_angles
from llama_tf.config import LlamaConfig
from llama_tf.feed_forward import FeedForward, ffn_hidden_dim
from llama_tf.rms_norm import RMSNorm
from llama_tf.tokenizer import Tokenizer, show_tokens
from llama_tf.transformer_block import TransformerBlock
from llama_tf.model import TokenEmbedding, build_llama
from llama_tf import checkpoint
from llama_tf.checkpoint import CheckpointError
from llama_tf.llm import LLM, load
