"""LoRA: low-rank adapters on a built model's projections, trained with ordinary Keras, saved and read in
PEFT's own format.

LoRA (Hu et al., 2021) leaves a projection's weights W frozen and learns an update of rank r beside them:
y = x · W + (x · Aᵀ) · Bᵀ · alpha / r, with A (r, in) drawn as PEFT draws it (Kaiming-uniform, a = √5)
and B (out, r) zero, so the model starts exactly as it was. `enable_lora` plugs a `LoRA` layer into the
`adapter` seam of each targeted `Projection` (notebook 12) and freezes every other variable: the model's
`trainable_weights` are then the adapters', and `model.fit` trains them. Acting on the built model from
outside, as gpt-fast's `quantize.py` does, it works on every backend and on any weight format (the base
held in Q8_0 blocks too: QLoRA's idea with llama.cpp's 8 bits).

`save_adapter` writes what `peft.PeftModel.from_pretrained` reads for a Hugging Face Llama (`adapter_config.json`,
`adapter_model.safetensors` with PEFT's tensor names; q/k rows in Hugging Face's rotate-half order);
`load_adapter` reads what PEFT saved (`use_rslora` included). `merge_lora` folds the update into the
float weights, after which the model is an ordinary one again.
"""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path

import keras
import numpy as np
from keras import ops

from llama_tf.config import LlamaConfig
from llama_tf.formats.base import CheckpointError, read_json
from llama_tf.formats.hf import permute_rope_rows, unpermute_rope_rows
from llama_tf.formats.staging import staged_folder
from llama_tf.keras_internals import unlocked
from llama_tf.layers.projection import Projection
from llama_tf.model import transformer_blocks

__all__ = ["LoRA", "TARGETS", "XLA_STEP", "enable_lora", "disable_lora", "merge_lora", "adapters", "save_adapter", "load_adapter"]

# Meta's projection names -> the block's sublayer path and Hugging Face's module name (PEFT's `target_modules`).
TARGETS = {"wq": ("attention", "q_proj", "self_attn"), "wk": ("attention", "k_proj", "self_attn"),
           "wv": ("attention", "v_proj", "self_attn"), "wo": ("attention", "o_proj", "self_attn"),
           "w1": ("feed_forward", "gate_proj", "mlp"), "w2": ("feed_forward", "down_proj", "mlp"),
           "w3": ("feed_forward", "up_proj", "mlp")}
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# `model.compile(..., jit_compile=XLA_STEP)`: Keras' default ("auto") leaves XLA off for TensorFlow on a
# machine without a GPU, where a LoRA step of the Llama 3.2 1B shape then takes 2.8 times as long
# (benchmarks/finetune.py); JAX compiles with XLA anyway, and PyTorch runs eagerly.
XLA_STEP = True if keras.backend.backend() == "tensorflow" else "auto"
_FROZEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> the variables enable_lora froze


class LoRA(keras.layers.Layer):
    """x (..., in) -> dropout(x) · Aᵀ · Bᵀ · scale, A (rank, in) and B (units, rank) as PEFT holds them.
    `enable_lora` makes it float32 whatever the base's dtype, as PEFT's `autocast_adapter_dtype` does: a
    bfloat16 or Q8_0 base, float32 adapters trained in float32."""

    def __init__(self, in_features: int, units: int, rank: int, scale: float, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.units, self.rank, self.scale = in_features, units, rank, scale
        self.dropout = keras.layers.Dropout(dropout) if dropout else None
        bound = 1 / math.sqrt(in_features)   # kaiming_uniform(a=√5), PEFT's and nn.Linear's default
        self.lora_a = self.add_weight(name="lora_a", shape=(rank, in_features),
                                      initializer=keras.initializers.RandomUniform(-bound, bound))
        self.lora_b = self.add_weight(name="lora_b", shape=(units, rank), initializer="zeros")

    def call(self, x, training=None):
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        low = ops.matmul(x, ops.transpose(ops.cast(self.lora_a, x.dtype)))
        return ops.matmul(low, ops.transpose(ops.cast(self.lora_b, x.dtype))) * self.scale


def _projection(block, target: str) -> Projection:
    return getattr(getattr(block, TARGETS[target][0]), target)


def _check(rank, alpha, targets, dropout) -> tuple[str, ...]:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise ValueError(f"targets must be some of {', '.join(TARGETS)}, got {targets!r}")
    return targets


def enable_lora(model: keras.Model, rank: int = 8, alpha: float = 16, targets=tuple(TARGETS), dropout: float = 0.0,
                rslora: bool = False) -> list[LoRA]:
    """Adapters of `rank` on the `targets` of every block (scale alpha / rank, or alpha / √rank with
    `rslora`), everything else frozen. Returns the adapters; any earlier ones are replaced."""
    targets = _check(rank, alpha, targets, dropout)
    disable_lora(model)
    scale = alpha / (math.sqrt(rank) if rslora else rank)
    added = []
    for i, block in enumerate(transformer_blocks(model)):
        for target in targets:
            layer = _projection(block, target)
            with unlocked(layer):
                layer.adapter = LoRA(layer.in_features, layer.units, rank, scale, dropout,
                                     name=f"lora_{target}_{i}", dtype="float32")
            added.append(layer.adapter)
    mine = {id(v) for adapter in added for v in adapter.weights}
    _FROZEN[model] = [v for v in model.weights if v.trainable and id(v) not in mine]
    for variable in _FROZEN[model]:
        variable.trainable = False
    return added


def _adapted(model: keras.Model) -> dict[tuple[int, str], Projection]:
    "The projections that hold an adapter, by (block index, target)."
    found = {}
    for i, block in enumerate(transformer_blocks(model)):
        for target in TARGETS:
            if (layer := _projection(block, target)).adapter is not None:
                found[i, target] = layer
    return found


def adapters(model: keras.Model) -> dict[tuple[int, str], LoRA]:
    "The adapters in place, by (block index, target)."
    return {key: layer.adapter for key, layer in _adapted(model).items()}


def disable_lora(model: keras.Model) -> None:
    "Take every adapter out; the variables `enable_lora` froze are trainable again."
    for layer in _adapted(model).values():
        with unlocked(layer):
            layer.adapter = None
    for variable in _FROZEN.pop(model, []):
        variable.trainable = True


def merge_lora(model: keras.Model) -> None:
    "Fold each adapter's update into its projection's float weights, then take the adapters out."
    layers = list(_adapted(model).values())
    if any(layer.weights_format == "q8_0" for layer in layers):   # refused before any weight changes
        raise ValueError("merging an adapter into Q8_0 weights would round it away; load the base in "
                         "float32 or bfloat16 to merge")
    for layer in layers:
        update = _update(layer.adapter)                                 # (out, in)
        if layer.weights_format == "float_out_in":
            layer.weight.assign(ops.cast(ops.cast(layer.weight, "float32") + update, layer.weight.dtype))
        else:
            layer.kernel.assign(ops.cast(ops.cast(layer.kernel, "float32") + ops.transpose(update), layer.kernel.dtype))
    disable_lora(model)


def _update(adapter: LoRA):
    a, b = (ops.cast(v, "float32") for v in (adapter.lora_a, adapter.lora_b))
    return ops.matmul(b, a) * adapter.scale


def _peft_name(i: int, target: str, matrix: str) -> str:
    _, hf, group = TARGETS[target]
    return f"base_model.model.model.layers.{i}.{group}.{hf}.lora_{matrix}.weight"


def _rope_heads(target: str, config: LlamaConfig) -> int | None:
    return {"wq": config.n_heads, "wk": config.n_kv_heads}.get(target)


def save_adapter(model: keras.Model, config: LlamaConfig, path: str | Path) -> Path:
    """The adapters as PEFT saves them for a Hugging Face Llama: a folder with `adapter_config.json` and
    `adapter_model.safetensors`, written atomically (`staged_folder`)."""
    from safetensors.numpy import save_file

    found = adapters(model)
    if not found:
        raise ValueError("the model has no adapters: enable_lora or load_adapter first")
    shapes = {(a.rank, a.scale, a.dropout.rate if a.dropout else 0.0) for a in found.values()}
    if len(shapes) > 1:
        raise ValueError("PEFT's format has one rank and scale for every adapter; these differ")
    ((rank, scale, dropout),) = shapes
    tensors = {}
    for (i, target), adapter in found.items():
        a, b = (np.asarray(ops.convert_to_numpy(ops.cast(v, "float32"))) for v in (adapter.lora_a, adapter.lora_b))
        if heads := _rope_heads(target, config):
            b = permute_rope_rows(b, heads)                   # Hugging Face's rotate-half row order
        tensors[_peft_name(i, target, "A")], tensors[_peft_name(i, target, "B")] = a, np.ascontiguousarray(b)
    targets = [t for t in TARGETS if any(key[1] == t for key in found)]
    settings = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": scale * rank,
                "lora_dropout": dropout, "target_modules": [TARGETS[t][1] for t in targets], "bias": "none",
                "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "inference_mode": True,
                "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
                "base_model_name_or_path": None, "revision": None}
    with staged_folder(Path(path), CheckpointError) as stage:
        (stage / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
    return Path(path)


def load_adapter(model: keras.Model, config: LlamaConfig, path: str | Path, dropout: float = 0.0) -> list[LoRA]:
    "Adapters that PEFT saved for a Hugging Face Llama (the folder `save_adapter` writes), in place of any."
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from llama_tf.formats.base import regular_file

    path = Path(path)
    settings = read_json(path / CONFIG_FILE)
    if settings.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {settings.get('peft_type')!r}; llama_tf reads LORA adapters")
    for key, plain in (("bias", "none"), ("use_dora", False), ("layers_to_transform", None), ("modules_to_save", None),
                       ("rank_pattern", {}), ("alpha_pattern", {}), ("fan_in_fan_out", False)):
        if settings.get(key) not in (None, plain):
            raise CheckpointError(f"{path}: {key} = {settings[key]!r} is not supported (llama_tf reads plain LoRA)")
    by_hf_name = {hf: target for target, (_, hf, _) in TARGETS.items()}
    modules = settings.get("target_modules")
    modules = [modules] if isinstance(modules, str) else modules
    if not isinstance(modules, list) or not modules or any(m not in by_hf_name for m in modules):
        raise CheckpointError(f"{path}: target_modules {settings.get('target_modules')!r}: llama_tf applies "
                              f"adapters to {', '.join(by_hf_name)}")
    try:
        added = enable_lora(model, settings.get("r"), settings.get("lora_alpha"), [by_hf_name[m] for m in modules],
                            dropout, rslora=bool(settings.get("use_rslora")))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        tensors = load_file(str(regular_file(path / WEIGHTS_FILE)))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: cannot be read ({e})") from None
    expected = set()
    for (i, target), adapter in adapters(model).items():
        names = [_peft_name(i, target, m) for m in ("A", "B")]
        expected.update(names)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: no tensor {missing[0]}")
        a, b = tensors[names[0]], tensors[names[1]]
        if a.shape != tuple(adapter.lora_a.shape) or b.shape != tuple(adapter.lora_b.shape):
            raise CheckpointError(f"{path / WEIGHTS_FILE}: {names[0]} and {names[1]} are {a.shape} and {b.shape}; "
                                  f"this model needs {tuple(adapter.lora_a.shape)} and {tuple(adapter.lora_b.shape)}")
        if heads := _rope_heads(target, config):
            b = unpermute_rope_rows(b, heads)
        adapter.lora_a.assign(a.astype("float32"))
        adapter.lora_b.assign(b.astype("float32"))
    if extra := sorted(set(tensors) - expected):
        raise CheckpointError(f"{path / WEIGHTS_FILE}: tensors for layers this model lacks, e.g. {extra[0]}")
    return added
