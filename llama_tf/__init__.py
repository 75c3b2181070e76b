"""Meta's LLaMA rebuilt layer by layer in Keras 3 on TensorFlow, from notebooks

Modules:

- `llama_tf.assets`: Files the notebooks read that this repository does not ship: found on disk, else downloaded once.
- `llama_tf.backend`: What differs between the Keras backends outside the layers: running a model for inference only.
- `llama_tf.chat`: Chat formats: a conversation, `[{"role": ..., "content": ...}, ...]`, as the token ids a chat model was tuned on.
- `llama_tf.cli`: What `python -m llama_tf` and `python -m llama_tf.train` share: every bad input is one `error:` line.
- `llama_tf.config`: `LlamaConfig`: the hyper-parameters of a LLaMA model, and how Meta's and Hugging Face's files spell them.
- `llama_tf.convert`: `convert`: any checkpoint llama_tf reads, written as Hugging Face safetensors or as a GGUF file.
- `llama_tf.distribution`: One model across several accelerators, through Keras' distribution API (JAX backend).
- `llama_tf.evaluation`: How well a model predicts a text: negative log-likelihood per character, and perplexity.
- `llama_tf.export`: Shipping a model: a TensorFlow SavedModel that takes strings and returns text, with the tokenizer and the decode loop inside the graph.
- `llama_tf.finetune`: Fine-tuning data: a text or a file of chat conversations as fixed-length training rows, with the weight each target token carries in the loss.
- `llama_tf.formats.base`: The one form every checkpoint format is read into, and the checks on it.
- `llama_tf.formats.gguf`: GGUF, llama.cpp's format: a `llama`-architecture file read into a `Checkpoint` through the `gguf` package.
- `llama_tf.formats.gguf_header`: A GGUF header walked once before the `gguf` reader sees it: every length and count checked against the bytes that remain.
- `llama_tf.formats.hf`: Hugging Face's layout: `config.json` + `model.safetensors`, or `model-0000X-of-0000Y.safetensors` shards with `model.safetensors.index.json`, read into a `Checkpoint` and written back from one.
- `llama_tf.formats.llama2c`: llama2.c's `.bin` checkpoints (Karpathy's `export.py`): the TinyStories models and anything exported with it.
- `llama_tf.formats.meta`: Meta's layout: `params.json` + `consolidated.00.pth` … `consolidated.NN.pth` (model-parallel shards), read into a `Checkpoint`.
- `llama_tf.formats.staging`: Writing a checkpoint atomically as a whole, privately to its writer.
- `llama_tf.generation`: Text generation: the compiled prefill/decode step, sampling, and text that streams as tokens arrive.
- `llama_tf.ggml_blocks`: llama.cpp's 4-, 5- and 6-bit block formats: their layout, cost and quantisation, and a weights format that holds a GGUF file's blocks as stored.
- `llama_tf.keras_internals`: The private Keras API llama_tf cannot do without, in one place: each use has a name here, and `tests/test_keras_internals.py` fails loudly when a Keras upgrade moves one.
- `llama_tf.layers.attention`: Causal self-attention as LLaMA computes it: rotary position embeddings, grouped-query heads, and a key/value cache for generation.
- `llama_tf.layers.feed_forward`: LLaMA's gated feed-forward network, `w2(silu(w1 x) * w3 x)`, and Meta's rule for its hidden width.
- `llama_tf.layers.projection`: The projection layer and 8-bit weights: a compiled matrix-vector kernel for one-token steps, and llama.cpp's Q8_0 blocks.
- `llama_tf.layers.rms_norm`: Root-mean-square normalization with a learned gain, the norm in front of every LLaMA sub-layer.
- `llama_tf.layers.tiled_attention`: Blockwise causal attention with an online softmax: the result of `Attention.attend`, in memory linear in the sequence length.
- `llama_tf.layers.transformer_block`: The pre-norm residual block LLaMA repeats `n_layers` times: `h = x + attention(norm(x))`, `out = h + feed_forward(norm(h))`.
- `llama_tf.litert`: Shipping a model to phones and small devices: a LiteRT (formerly TensorFlow Lite) file with `prefill` and `decode` signatures over a key/value cache that the caller holds, and a greedy loop over them.
- `llama_tf.llm`: `load` a checkpoint into an `LLM` (config + tokenizer + Keras model) and generate text with it.
- `llama_tf.loading`: Loading a `Checkpoint` (any format, `llama_tf.formats`) into a Keras model built by `build_llama`, and a model's weights back out under Meta's names.
- `llama_tf.lora`: LoRA: low-rank adapters on a built model's projections, trained with ordinary Keras, saved and read in PEFT's own format.
- `llama_tf.model`: The functional LLaMA model (`Llama`, `build_llama`) and its forward pass over a key/value cache (`new_cache`, `call_with_cache`): a prefill, then one token per step.
- `llama_tf.q8_0`: llama.cpp's Q8_0 blocks in NumPy: the codec that the GGUF reader and the `Projection` layer share.
- `llama_tf.quiet`: The native libraries' start-up log lines kept out of sessions, notebooks and command lines.
- `llama_tf.rope`: RoPE's frequencies in NumPy: θ_i = theta^(-2i / head_dim) for each feature pair, and their rescaling for long contexts (Llama 3.1 and 3.2; notebook 11).
- `llama_tf.sampling`: Choosing each next token: greedy decoding and sampling shaped by temperature, top-k and top-p, reproducible for a seed.
- `llama_tf.speculative`: Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes `draft_tokens` tokens one at a time, the target model scores them all in one call, and the longest run it agrees with is kept, with one token of its own after it. Each round costs the target one call for up to `draft_tokens + 1` tokens.
- `llama_tf.structure`: A LLaMA model's structure, named once: its tensors under Meta's names with their shapes, and which projections model parallelism splits along their outputs or their inputs.
- `llama_tf.tokenizers.byte_pair_ops`: Llama 3's byte-level BPE as TensorFlow ops, for a graph that tokenizes without Python (a SavedModel).
- `llama_tf.tokenizers.embedded_tokenizers`: Tokenizers stored in other projects' files, run as the package's kinds: a GGUF file's vocabulary and llama2.c's `tokenizer.bin`. `Tokenizer("model.gguf")` and `Tokenizer("tokenizer.bin")` work alone.
- `llama_tf.tokenizers.hf_tokenizer`: A Hugging Face `tokenizer.json` (what most downloads carry) through the `tokenizers` library.
- `llama_tf.tokenizers.sentencepiece_library`: LLaMA's SentencePiece tokenizer through the `sentencepiece` library alone, for machines without TensorFlow (a JAX or PyTorch GPU box): the ids and text of `SentencePieceTokenizer` (notebook 01, which runs the same model as `tensorflow_text` ops), with the `Tokenizer` interface on Python lists. `Tokenizer(path)` picks it when `tensorflow_text` cannot be imported.
- `llama_tf.tokenizers.sentencepiece_tokenizer`: LLaMA's SentencePiece tokenizer as TensorFlow ops: text to int32 ids and back, eagerly, in `tf.function` and in `tf.data`.
- `llama_tf.tokenizers.tiktoken_tokenizer`: Llama 3's tokenizer: byte-level BPE over `tiktoken` ranks, with Meta's pre-split regex and 256 special tokens.
- `llama_tf.tokenizers.tokenizer`: `Tokenizer`: one interface for every kind of LLaMA tokenizer; `Tokenizer(path)` opens the right kind.
- `llama_tf.train`: Train a small LLaMA with Keras, the way the shipped default model was trained; fine-tune one with LoRA."""

# The docstring above is written by nbdev-export. Names below are imported on first use, so that the
# Keras layers (`llama_tf.model` and below) also load on another Keras backend without TensorFlow.
import importlib
import importlib.util

from llama_tf.quiet import quiet_tensorflow_start

quiet_tensorflow_start()   # TensorFlow's start-up log lines (cuInit on a machine without a GPU) dropped

__version__ = "0.1.0"

_EXPORTS = {
    "Tokenizer": "tokenizers.tokenizer", "TokenizerError": "tokenizers.tokenizer",
    "SentencePieceTokenizer": "tokenizers.sentencepiece_tokenizer", "show_tokens": "tokenizers.sentencepiece_tokenizer",
    "TiktokenTokenizer": "tokenizers.tiktoken_tokenizer", "HFTokenizer": "tokenizers.hf_tokenizer",
    "RMSNorm": "layers.rms_norm",
    "FeedForward": "layers.feed_forward", "ffn_hidden_dim": "config",
    "Attention": "layers.attention", "apply_rope": "layers.attention", "causal_mask": "layers.attention", "rope_angles": "layers.attention",
    "visible_keys": "layers.attention", "write_slots": "layers.attention", "tiled_attention": "layers.tiled_attention",
    "TransformerBlock": "layers.transformer_block",
    "TokenEmbedding": "model", "Llama": "model", "build_llama": "model",
    "LlamaConfig": "config",
    "CheckpointError": "formats", "read_checkpoint": "formats",
    "LLM": "llm", "load": "llm", "DEFAULT_WEIGHTS": "llm",
    "evaluate": "evaluation",
    "device_mesh": "distribution", "layout_map": "distribution", "model_parallel": "distribution",
    "data_parallel": "distribution",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"llama_tf.{_EXPORTS[name]}"), name)
    if importlib.util.find_spec(f"llama_tf.{name}") is not None:   # a module: llama_tf.assets, ...
        return importlib.import_module(f"llama_tf.{name}")
    raise AttributeError(f"module 'llama_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
