"""Reference models and checkpoint writers for the tests: Hugging Face `transformers` on random weights,
and Meta's layout written the way Meta's model parallelism splits tensors."""

import codecs
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np

from conftest import require
from llama_tf.backend import to_numpy

VOCAB = 384


def train_tiny_tokenizer() -> bytes:
    spm = require("sentencepiece")
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen of Python
        import this
    zen = codecs.decode(this.s, "rot13")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(zen.splitlines() * 4), model_writer=model, vocab_size=VOCAB,
        model_type="bpe", byte_fallback=True, split_digits=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, minloglevel=2,
    )
    return model.getvalue()


def hf_model(seed=0, round_to=None, **config):
    """A random float32 `LlamaForCausalLM`; norm gains are randomised too so that none of them is a no-op.
    `round_to` ("float16", "bfloat16") rounds every weight to that precision, keeping float32 storage
    (casting the module itself would also round its RoPE frequency buffer)."""
    torch = require("torch")
    transformers = require("transformers")
    settings = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=256,
                    rms_norm_eps=1e-5, initializer_range=0.08)
    settings.update(config)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            if round_to is not None:
                p.copy_(p.to(getattr(torch, round_to)).float())
    return model


def half_copy(model, dtype):
    "A copy of `model` stored in `dtype`, for writing half-precision checkpoint files."
    return copy.deepcopy(model).to(getattr(require("torch"), dtype))


def hf_logits(model, ids) -> np.ndarray:
    torch = require("torch")
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def write_hf(model, directory: Path, tokenizer_proto: bytes, **save_kwargs) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, **save_kwargs)
    (directory / "tokenizer.model").write_bytes(tokenizer_proto)
    return directory


def _hf_to_meta_rows(w, n_heads):
    """Inverse of the `permute` in transformers' convert_llama_weights_to_hf.py, which maps Meta's
    interleaved RoPE pairs to rotate-half order: view (heads, dim/heads/2, 2, in), transpose(1, 2)."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


_META_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
               "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
               "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
               "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
               "post_attention_layernorm": "ffn_norm"}


def meta_state(model) -> dict:
    """The HF model's weights under Meta's names and RoPE layout (torch tensors, model dtype)."""
    cfg = model.config
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "model.embed_tokens.weight":
            state["tok_embeddings.weight"] = tensor
        elif name == "model.norm.weight":
            state["norm.weight"] = tensor
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                state["output.weight"] = tensor
        else:
            _, _, i, rest = name.split(".", 3)
            module = rest.removesuffix(".weight")
            if module == "self_attn.q_proj":
                tensor = _hf_to_meta_rows(tensor, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                tensor = _hf_to_meta_rows(tensor, cfg.num_key_value_heads)
            state[f"layers.{i}.{_META_NAMES[module]}.weight"] = tensor
    return state


def _meta_split_axis(name, embedding_axis):
    """How Meta's fairscale layers shard a tensor: ColumnParallelLinear (wq, wk, wv, w1, w3, output)
    splits dim 0, RowParallelLinear (wo, w2) dim 1, ParallelEmbedding dim 1 (Llama 2) or
    VocabParallelEmbedding dim 0 (Llama 3); RMSNorm gains are replicated."""
    if name.endswith("norm.weight"):
        return None
    if name == "tok_embeddings.weight":
        return embedding_axis
    if name.endswith(("wo.weight", "w2.weight")):
        return 1
    return 0


def write_meta(model, directory: Path, tokenizer_proto: bytes, n_shards=1, embedding_axis=1) -> Path:
    torch = require("torch")
    cfg = model.config
    directory.mkdir(parents=True, exist_ok=True)
    state = meta_state(model)
    for shard in range(n_shards):
        part = {}
        for name, tensor in state.items():
            axis = _meta_split_axis(name, embedding_axis)
            part[name] = tensor.clone() if axis is None else torch.chunk(tensor, n_shards, dim=axis)[shard].clone()
        torch.save(part, directory / f"consolidated.{shard:02d}.pth")
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "vocab_size": -1, "multiple_of": 4,
              "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_parameters["rope_theta"]}
    (directory / "params.json").write_text(json.dumps(params))
    # Meta's downloads keep tokenizer.model one level above the weights.
    (directory.parent / "tokenizer.model").write_bytes(tokenizer_proto)
    return directory


def max_relative_error(ours, reference) -> float:
    "max |ours - reference| / max |reference|; either may be a tensor of any Keras backend."
    ours, reference = (np.asarray(to_numpy(x), np.float64) for x in (ours, reference))
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def stored_dtypes(directory: Path) -> set[str]:
    "The dtypes of the tensors in a checkpoint folder's weight files, as torch names them."
    torch = require("torch")
    from safetensors.torch import load_file

    dtypes = set()
    for file in directory.glob("*.safetensors"):
        dtypes |= {str(t.dtype).removeprefix("torch.") for t in load_file(file).values()}
    for file in directory.glob("*.pth"):
        dtypes |= {str(t.dtype).removeprefix("torch.") for t in torch.load(file, weights_only=True).values()}
    return dtypes


B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def meta_llama2_chat_tokens(sp, dialog: list[dict]) -> list[int]:
    """The prompt tokens of Meta's Llama 2 `Llama.chat_completion` (llama/generation.py), transcribed, for a
    `sentencepiece.SentencePieceProcessor`: Meta's `Tokenizer.encode(s, bos, eos)` is `[bos] + sp.encode(s) + [eos]`."""
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    assert all(m["role"] == "user" for m in dialog[::2]) and all(m["role"] == "assistant" for m in dialog[1::2])
    tokens = sum([[sp.bos_id()] + sp.encode(f"{B_INST} {(prompt['content']).strip()} {E_INST} "
                                            f"{(answer['content']).strip()} ") + [sp.eos_id()]
                  for prompt, answer in zip(dialog[::2], dialog[1::2])], [])
    assert dialog[-1]["role"] == "user"
    return tokens + [sp.bos_id()] + sp.encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}")


def meta_llama3_chat_tokens(meta_tokenizer, dialog: list[dict]) -> list[int]:
    "The prompt tokens of `llama_models`' Llama 3 `ChatFormat.encode_dialog_prompt` for `dialog`."
    chat_format = require("llama_models.llama3.chat_format")
    datatypes = require("llama_models.datatypes")
    messages = [datatypes.RawMessage(role=m["role"], content=m["content"]) for m in dialog]
    return chat_format.ChatFormat(meta_tokenizer).encode_dialog_prompt(messages).tokens


def write_llama2c(model, path: Path, version: int = 0, group_size: int = 64) -> Path:
    """A llama2.c `.bin` of a `LlamaForCausalLM`, as llama2.c's `export.py` writes it (`legacy_export`,
    `version1_export`, `version2_export`), transcribed: q/k rows in Meta's order, RoPE tables in v0."""
    import struct

    state, config = meta_state(model), model.config
    n_layers, dim = config.num_hidden_layers, config.hidden_size
    head_dim = dim // config.num_attention_heads
    shared = "output.weight" not in state
    header = [dim, config.intermediate_size, n_layers, config.num_attention_heads,
              config.num_key_value_heads, config.vocab_size, config.max_position_embeddings]

    def layers(kind):
        return [state[f"layers.{i}.{kind}.weight"] for i in range(n_layers)]

    matrices = [m for kind in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                               "feed_forward.w1", "feed_forward.w2", "feed_forward.w3") for m in layers(kind)]
    with open(path, "wb") as f:
        if version == 0:
            f.write(struct.pack("7i", *header[:5], header[5] if shared else -header[5], header[6]))
            freqs = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2)[: head_dim // 2] / head_dim))
            angles = np.outer(np.arange(header[6]), freqs)
            weights = [state["tok_embeddings.weight"], *layers("attention_norm"), *matrices[: 4 * n_layers],
                       *layers("ffn_norm"), *matrices[4 * n_layers:], state["norm.weight"], np.cos(angles),
                       np.sin(angles)] + ([] if shared else [state["output.weight"]])
        else:
            f.write(struct.pack("I", 0x616B3432) + struct.pack("i", version) + struct.pack("7i", *header))
            f.write(struct.pack("B", int(shared)))
            if version == 2:
                f.write(struct.pack("i", group_size))
            f.write(b"\0" * (256 - f.tell()))
            norms = [*layers("attention_norm"), *layers("ffn_norm"), state["norm.weight"]]
            quantised = [state["tok_embeddings.weight"], *matrices] + ([] if shared else [state["output.weight"]])
            weights = norms + quantised if version == 1 else norms
        for w in weights:
            f.write(np.asarray(w, "<f4").tobytes())
        if version == 2:
            scales = []
            for w in quantised:
                groups = np.asarray(w, np.float32).reshape(-1, group_size)
                scale = np.abs(groups).max(axis=1) / 127.0
                f.write(np.round(groups / scale[:, None]).astype(np.int8).tobytes())
                scales.append(scale.astype("<f4"))
            for scale in scales:
                f.write(scale.tobytes())
    return path


def write_llama2c_tokenizer(tokenizer_proto: bytes, path: Path) -> Path:
    "llama2.c's `tokenizer.bin`, as its `tokenizer.py` `export()` writes it, transcribed."
    import struct

    sp = require("sentencepiece").SentencePieceProcessor(model_proto=tokenizer_proto)
    tokens, scores = [], []
    for i in range(sp.vocab_size()):
        t = sp.id_to_piece(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        tokens.append(t.replace("▁", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    with open(path, "wb") as f:
        f.write(struct.pack("I", max(len(t) for t in tokens)))
        for token, score in zip(tokens, scores):
            f.write(struct.pack("fI", score, len(token)))
            f.write(token)
    return path


def in_xla_step(function):
    """`function` traced inside `kernels.xla_step()` in a `tf.function` that TensorFlow's XLA compiles, so
    that llama_tf's kernels are custom calls in XLA's program."""
    tf = require("tensorflow")
    from llama_tf import kernels

    def traced(*args):
        with kernels.xla_step():
            return function(*args)
    return tf.function(traced, jit_compile=True)


def random_blocks(block_type, rows: int, columns: int, rng) -> np.ndarray:
    """uint8 (rows, row bytes) of random bytes in `block_type`'s blocks (`llama_tf.ggml_blocks.BLOCK_TYPES`):
    every bit pattern is a valid block once its float16 scales are finite, so these are set to small numbers."""
    raw = rng.integers(0, 256, (rows, columns // block_type.weights, block_type.bytes), dtype=np.uint8)
    for at in {"q6_k": (208,), "q4_0": (0,), "q5_0": (0,)}.get(block_type.name, (0, 2)):
        raw[..., at:at + 2] = rng.uniform(-0.02, 0.02, raw.shape[:2] + (1,)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def write_gguf(directory: Path, path: Path, dtype: str) -> Path:
    "The checkpoint at `directory` written by llama_tf as a GGUF file of `dtype` (F32, …, Q4_K), its tokenizer inside."
    import llama_tf
    from llama_tf.formats import read_checkpoint
    from llama_tf.formats.gguf import write_gguf as write
    from llama_tf.tokenizers.embedded_tokenizers import gguf_vocabulary

    checkpoint = read_checkpoint(directory)
    vocabulary = gguf_vocabulary(llama_tf.load(directory).tokenizer)
    return write(path, checkpoint.config, {n: r.load for n, r in checkpoint.tensors.items()}, vocabulary, dtype)


def write_quantised_gguf(source: Path, target: Path, ftype: str) -> Path:
    "The GGUF file `source` quantised by llama.cpp itself (`llama_model_quantize`) to LLAMA_FTYPE_MOSTLY_`ftype`."
    import ctypes

    llama_cpp = require("llama_cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) == 0
    return target
