"""`LlamaConfig`: the hyper-parameters of a LLaMA model, and how Meta's and Hugging Face's files spell them.

Fields are named as in Meta's `params.json` (`dim`, `n_layers`, `n_heads`, `n_kv_heads`, `hidden_dim`,
`norm_eps`, `rope_theta`, ...); `from_meta_params` and `from_hf_config` read either file's spelling,
`num_parameters` counts the weights from the shapes alone, and an inconsistent value raises `ValueError`.
`ffn_hidden_dim` is Meta's rule for the feed-forward width (notebook 03). A leaf: imports nothing of llama_tf.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["LlamaConfig", "rope_scaling", "ffn_hidden_dim"]

# Meta's reference code for Llama 3.1 (`apply_scaling` in llama-models) fixes these; params.json only says
# `use_scaled_rope`. (Llama 3.2's Hugging Face config.json says factor 32; its params.json cannot, and
# Meta's code then uses 8: llama_tf follows whichever file it reads.)
META_LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}
_SCALING_KEYS = {"linear": ("factor",),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def ffn_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU hidden width from the model width, as Meta's `FeedForward` computes it (notebook 03): 2/3 of
    4·dim, scaled by `ffn_dim_multiplier`, rounded up to a multiple of `multiple_of`."""
    hidden_dim = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


def rope_scaling(spec: dict | None) -> dict | None:
    """RoPE frequency scaling in the form the layers take: None (plain RoPE), {"rope_type": "linear",
    "factor"} or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}. Reads Hugging Face's spellings (`rope_type` or the older `type`,
    extra keys ignored); an unknown type, a missing key or a value out of range raises ValueError."""
    if not spec:
        return None
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind == "default":
        return None
    if kind not in _SCALING_KEYS:
        raise ValueError(f"RoPE scaling {kind!r} is not supported; llama_tf implements 'default', 'linear' and 'llama3'")
    missing = [k for k in _SCALING_KEYS[kind] if spec.get(k) is None]
    if missing:
        raise ValueError(f"RoPE scaling {kind!r} needs {', '.join(missing)}")
    scaling = {"rope_type": kind}
    for key in _SCALING_KEYS[kind]:
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"RoPE scaling {kind!r}: {key} must be a positive number, got {value!r}")
        scaling[key] = int(value) if key == "original_max_position_embeddings" else float(value)
    if kind == "llama3" and not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        raise ValueError(f"RoPE scaling 'llama3': low_freq_factor ({scaling['low_freq_factor']}) must be below "
                         f"high_freq_factor ({scaling['high_freq_factor']})")
    return scaling


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a LLaMA model. Field names follow Meta's `ModelArgs` (`llama/model.py`).

    `hidden_dim` is the SwiGLU width; left as None it follows Meta's rule from `multiple_of` and
    `ffn_dim_multiplier` (see notebook 03). `n_kv_heads` None means multi-head attention (= `n_heads`).
    `rope_scaling` stretches RoPE's frequencies for long contexts (Llama 3.1/3.2; see `rope_scaling`).
    """

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    hidden_dim: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    rope_scaling: dict | None = None

    def __post_init__(self):
        object.__setattr__(self, "rope_scaling", rope_scaling(self.rope_scaling))
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.hidden_dim is None:
            if isinstance(self.multiple_of, bool) or not isinstance(self.multiple_of, int) or self.multiple_of <= 0:
                raise ValueError(f"LlamaConfig.multiple_of must be a positive integer, got {self.multiple_of!r}")
            if self.ffn_dim_multiplier is not None and (
                    isinstance(self.ffn_dim_multiplier, bool) or not isinstance(self.ffn_dim_multiplier, (int, float))
                    or not 0 < self.ffn_dim_multiplier < 1e6):
                raise ValueError(f"LlamaConfig.ffn_dim_multiplier must be a positive number, got {self.ffn_dim_multiplier!r}")
            object.__setattr__(
                self, "hidden_dim", ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
            )
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig: dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LlamaConfig: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"LlamaConfig.{name} must be a finite number, got {value!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"LlamaConfig.tie_embeddings must be True or False, got {self.tie_embeddings!r}")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"LlamaConfig: norm_eps ({self.norm_eps}) and rope_theta ({self.rope_theta}) must be positive"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def num_parameters(self) -> int:
        attention = self.dim * self.head_dim * 2 * (self.n_heads + self.n_kv_heads)  # wq, wo; wk, wv
        feed_forward = 3 * self.dim * self.hidden_dim
        per_layer = attention + feed_forward + 2 * self.dim                          # + two RMSNorm gains
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + embeddings + self.dim                      # + final norm

    def replace(self, **changes) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta_params(cls, params: dict, vocab_size: int | None = None) -> LlamaConfig:
        """From Meta's `params.json`. Llama 2 writes `vocab_size: -1`; pass the embedding's row count."""
        known = {f.name for f in dataclasses.fields(cls)} - {"rope_scaling"}
        kwargs = {k: v for k, v in params.items() if k in known and v is not None}
        if params.get("use_scaled_rope"):   # Llama 3.1 and later
            factor = params.get("rope_scaling_factor") or META_LLAMA3_SCALING["factor"]
            kwargs["rope_scaling"] = {**META_LLAMA3_SCALING, "factor": factor}
        if kwargs.get("vocab_size", -1) <= 0:
            kwargs["vocab_size"] = vocab_size
        return cls(**kwargs)

    @classmethod
    def from_hf_config(cls, cfg: dict) -> LlamaConfig:
        """From a Hugging Face `config.json` of a `LlamaForCausalLM`."""
        if cfg.get("model_type", "llama") != "llama":
            raise ValueError(f"config.json describes a {cfg['model_type']!r} model, not 'llama'")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                    "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = cfg[key] if key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "intermediate_size", "vocab_size") else cfg.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"config.json: {key} must be an integer, got {value!r}")
        # transformers >= 5 nests rope settings in `rope_parameters`; older versions use top-level keys.
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError(f"config.json: rope_parameters / rope_scaling must be an object, got {rope!r:.60}")
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag):
                raise ValueError(f"config.json sets {flag}=true; LLaMA projections have no biases")
        n_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim")
        if head_dim is not None and head_dim * n_heads != cfg["hidden_size"]:
            raise ValueError(
                f"config.json: head_dim={head_dim} × num_attention_heads={n_heads} != hidden_size="
                f"{cfg['hidden_size']}; llama_tf needs head_dim = hidden_size / num_attention_heads"
            )
        tie = cfg.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ValueError(f"config.json: tie_word_embeddings must be true or false, got {tie!r}")
        return cls(
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            vocab_size=cfg["vocab_size"],
            hidden_dim=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            tie_embeddings=tie,
            rope_scaling=rope,
        )
