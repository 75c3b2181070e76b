"""Hugging Face's layout: `config.json` + `model.safetensors`, or `model-0000X-of-0000Y.safetensors`
shards with `model.safetensors.index.json`, read into a `Checkpoint` and written back from one.

Hugging Face orders each head's q/k rows for its "rotate-half" RoPE; Meta interleaves them as adjacent
pairs. Reading unpermutes them (`unpermute_rope_rows`), writing permutes them back. Tensors are read
lazily, one at a time, from memory-mapped files; dtypes other than F32/F16/BF16/F64 are refused by name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from llama_tf.config import LlamaConfig
from llama_tf.formats.base import IGNORED, Checkpoint, CheckpointError, TensorRef, read_config, read_json, regular_file
from llama_tf.formats.staging import staged_folder

__all__ = ["read_hf", "write_hf", "hf_config", "unpermute_rope_rows", "permute_rope_rows", "SHARD_BYTES"]

_HF_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
_HF_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
_HF_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def _hf_to_meta_name(name: str) -> str | None:
    if name in _HF_TOP:
        return _HF_TOP[name]
    match = _HF_LAYER_NAME.fullmatch(name)
    if match and match[2] in _HF_LAYER:
        return f"layers.{match[1]}.{_HF_LAYER[match[2]]}.weight"
    return None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face stores each head's q/k rows as [all even features, all odd features] for its
    "rotate-half" RoPE; Meta interleaves them as adjacent pairs. (out, in) HF order -> Meta order."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    "Meta's adjacent-pair q/k rows -> Hugging Face's rotate-half order (inverse of `unpermute_rope_rows`)."
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def _rope_heads(name: str, config: LlamaConfig) -> int | None:
    "Heads of the q/k projection `name` (Meta name), whose rows the two RoPE layouts order differently."
    if name.endswith("attention.wq.weight"):
        return config.n_heads
    if name.endswith("attention.wk.weight"):
        return config.n_kv_heads
    return None


_SAFETENSORS_DTYPES = ("F32", "F16", "BF16", "F64")


def _safetensors_keys(file: Path) -> dict[str, tuple]:
    "Tensor names and shapes in a safetensors file, from its header; a dtype llama_tf cannot read is refused by name."
    from safetensors import safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            for name, part in slices.items():
                if part.get_dtype() not in _SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{file}: tensor {name} is stored as {part.get_dtype()}; llama_tf reads "
                                          f"{', '.join(_SAFETENSORS_DTYPES)}")
            return {name: tuple(part.get_shape()) for name, part in slices.items()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _load_safetensor(file: Path, name: str, transform: Callable | None) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as f:
        array = f.get_tensor(name)
    return transform(array) if transform else array


def read_hf(path: Path) -> Checkpoint:
    "A Hugging Face checkpoint: a folder with `config.json`, or one `.safetensors` file in such a folder."
    directory = path if path.is_dir() else path.parent
    config = read_config(lambda: LlamaConfig.from_hf_config(read_json(directory / "config.json")),
                     directory / "config.json")
    index = directory / "model.safetensors.index.json"
    if path.is_file():
        files = [path]
    elif index.is_file():
        weight_map = read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: no weight_map of tensor names to file names")
        files = sorted({directory / f for f in weight_map.values()})
        for f in files:
            if f.resolve().parent != directory.resolve():
                raise CheckpointError(f"{index} lists {os.path.relpath(f, directory)}, which is not a file in "
                                      f"{directory}: an index may only name files beside it")
            if not f.is_file():
                raise FileNotFoundError(f"{f.name}, listed in {index.name}, not found in {directory}")
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: config.json but no *.safetensors weights")
    files = [regular_file(f) for f in files]

    tensors, unknown = {}, []
    for file in files:
        for hf_name, shape in _safetensors_keys(file).items():
            meta_name = _hf_to_meta_name(hf_name)
            if meta_name is None:
                unknown.append(hf_name)
                continue
            if meta_name in tensors:
                raise CheckpointError(f"{directory}: tensor {hf_name} is stored twice ({tensors[meta_name].source}, "
                                      f"and in {file.name})")
            heads = _rope_heads(meta_name, config)
            transform = partial(unpermute_rope_rows, n_heads=heads) if heads else None
            tensors[meta_name] = TensorRef(f"{hf_name} in {file.name}",
                                           partial(_load_safetensor, file, hf_name, transform), shape)
    unknown = [n for n in unknown if not IGNORED.search(n)]
    if unknown:
        raise CheckpointError(f"{directory}: tensors that are not part of a LLaMA model: {unknown[:3]}")
    if config.tie_embeddings:
        tensors.pop("output.weight", None)  # some writers store the tied matrix twice
    return Checkpoint(config, tensors, directory, "hf", _has_chat_template(directory))


def _has_chat_template(directory: Path) -> bool:
    "Whether the folder declares a chat template: `chat_template.jinja`, or one in `tokenizer_config.json`."
    if (directory / "chat_template.jinja").is_file():
        return True
    try:
        return bool(read_json(directory / "tokenizer_config.json").get("chat_template"))
    except (FileNotFoundError, CheckpointError):   # the tokenizer's own loading reports a broken file
        return False



_HF_NAME = {meta: hf for hf, meta in _HF_TOP.items()}
_HF_LAYER_OF = {meta: hf for hf, meta in _HF_LAYER.items()}


def _meta_to_hf_name(name: str) -> str:
    if name in _HF_NAME:
        return _HF_NAME[name]
    _, i, module = name.removesuffix(".weight").split(".", 2)   # layers, 3, attention.wq
    return f"model.layers.{i}.{_HF_LAYER_OF[module]}.weight"


def hf_config(config: LlamaConfig, dtype: str = "float32") -> dict:
    "A Hugging Face `config.json` for `LlamaForCausalLM` describing `config`."
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": config.dim, "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "vocab_size": config.vocab_size, "rms_norm_eps": config.norm_eps,
        # transformers < 5 reads rope_theta and rope_scaling, >= 5 rope_parameters
        "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
        "rope_parameters": {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta},
        "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype,
    }


SHARD_BYTES = 5 * 10**9   # transformers' default max_shard_size, "5GB"


def write_hf(directory: str | Path, config: LlamaConfig, tensors: Mapping[str, Callable[[], np.ndarray]],
             dtype: str = "float32", files: Mapping[str, bytes] | None = None) -> Path:
    """Hugging Face's layout from tensors under Meta's names (loaders of arrays in Meta's orientation and
    RoPE order): `config.json`, `model.safetensors` or 5 GB shards with their index, and `files` (the
    tokenizer). Tensors are loaded one shard at a time.

    Atomic as a whole (`staged_folder`): a kill at any moment leaves the old checkpoint or the new one,
    never a mix; files in `directory` that are not part of a checkpoint (a training log) are kept."""
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"dtype {dtype!r}: Hugging Face checkpoints are written in float32, float16 or bfloat16")
    with staged_folder(Path(directory), CheckpointError) as stage:
        shards, shard, size = [], {}, 0
        for name, load in tensors.items():
            w = load()
            if heads := _rope_heads(name, config):
                w = permute_rope_rows(w, heads)
            w = np.ascontiguousarray(w.astype(np_dtype))
            if shard and size + w.nbytes > SHARD_BYTES:
                save_file(shard, stage / f"shard-{len(shards)}", metadata={"format": "pt"})
                shards.append(list(shard))
                shard, size = {}, 0
            shard[_meta_to_hf_name(name)], size = w, size + w.nbytes
        save_file(shard, stage / f"shard-{len(shards)}", metadata={"format": "pt"})
        shards.append(list(shard))
        del shard
        n = len(shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
        for k, name in enumerate(names):
            (stage / f"shard-{k}").rename(stage / name)
        if n > 1:
            weight_map = {tensor: file for file, held in zip(names, shards) for tensor in held}
            total = sum((stage / name).stat().st_size for name in names)
            (stage / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (stage / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
        for name, data in (files or {}).items():
            (stage / name).write_bytes(data)
    return Path(directory)
