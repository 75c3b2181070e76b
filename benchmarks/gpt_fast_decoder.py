"""A gpt-fast-style LLaMA decoder in plain PyTorch: the fastest thing an expert PyTorch user writes for one
GPU, as a peer for `gpu_decode.py`.

The design is gpt-fast's (pytorch-labs/gpt-fast, "Accelerating generative AI with PyTorch II"), written
here from its description: a key/value cache of fixed size in buffers that the step writes in place
(`index_copy_`), attention over the whole cache under a mask (`scaled_dot_product_attention`, grouped
heads), q, k and v in one matrix and gate and up in another, the one-token step compiled by
`torch.compile(mode="reduce-overhead")` (CUDA graphs: one launch a token) and the prompt by
`torch.compile(dynamic=True)`. It reads a Hugging Face checkpoint (`config.json` + safetensors) as
`transformers` writes it, so its RoPE is the rotate-half form of those weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


def rope_frequencies(config: dict) -> torch.Tensor:
    "The inverse frequencies of RoPE for a Hugging Face Llama config, Llama 3's rescaling included."
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if scaling.get("rope_type") == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv
        smooth = ((old / wavelength - low) / (high - low)).clamp(0, 1)
        inv = torch.where(wavelength > old / low, inv / factor,
                          torch.where(wavelength < old / high, inv, (1 - smooth) * inv / factor + smooth * inv))
    return inv.float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wqkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.attention_norm, self.ffn_norm = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.register_buffer("keys", None, persistent=False)     # the cache: buffers, as gpt-fast's KVCache
        self.register_buffer("values", None, persistent=False)

    def forward(self, x, cos, sin, mask, positions):
        b, s, _ = x.shape
        q, k, v = self.wqkv(self.attention_norm(x)).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
        q = rotate(q.view(b, s, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = rotate(k.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        self.keys.index_copy_(2, positions, k)
        self.values.index_copy_(2, positions, v.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2))
        out = F.scaled_dot_product_attention(q, self.keys, self.values, attn_mask=mask, enable_gqa=True)
        x = x + self.wo(out.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.w13(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.w2(F.silu(gate) * up)


class Transformer(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        dim, self.vocab = config["hidden_size"], config["vocab_size"]
        eps = config["rms_norm_eps"]
        self.embed = nn.Embedding(self.vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, config["num_attention_heads"], config["num_key_value_heads"],
                                          config["intermediate_size"], eps) for _ in range(config["num_hidden_layers"]))
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.output = nn.Linear(dim, self.vocab, bias=False)
        self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)
        self.register_buffer("causal", None, persistent=False)

    def setup_cache(self, batch: int, slots: int):
        "Fixed-size caches (batch, kv_heads, slots, head_dim) and the causal mask over them."
        dtype, device = self.output.weight.dtype, self.output.weight.device
        for block in self.blocks:
            shape = (batch, block.kv_heads, slots, block.head_dim)
            block.keys = torch.zeros(shape, dtype=dtype, device=device)
            block.values = torch.zeros(shape, dtype=dtype, device=device)
        self.causal = torch.tril(torch.ones(slots, slots, dtype=torch.bool, device=device))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        "Logits of the last position (batch, vocab) for ids (batch, seq) at cache slots `positions` (seq,)."
        angles = positions[:, None].float() * self.inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().to(self.output.weight.dtype), angles.sin().to(self.output.weight.dtype)
        mask = self.causal[None, None, positions]
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin, mask, positions)
        return self.output(self.norm(x[:, -1]))


def load(model_dir: Path, device: str = "cuda") -> Transformer:
    "The checkpoint in bfloat16 on `device`, q/k/v and gate/up fused."
    config = json.loads((Path(model_dir) / "config.json").read_text())
    state = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(file))
    with torch.device("meta"):
        model = Transformer(config)
    weights = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"],
               "output.weight": state.get("lm_head.weight", state["model.embed_tokens.weight"])}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            f"blocks.{i}.wqkv.weight": torch.cat([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
            f"blocks.{i}.wo.weight": state[p + "self_attn.o_proj.weight"],
            f"blocks.{i}.w13.weight": torch.cat([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]]),
            f"blocks.{i}.w2.weight": state[p + "mlp.down_proj.weight"],
            f"blocks.{i}.attention_norm.weight": state[p + "input_layernorm.weight"],
            f"blocks.{i}.ffn_norm.weight": state[p + "post_attention_layernorm.weight"]})
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in weights.items()}, assign=True, strict=False)
    model.inv_freq = rope_frequencies(config)
    return model.to(device).eval()


class Generator:
    """Greedy generation, gpt-fast's way: the prompt by a dynamically shaped compiled call, then each token
    by the compiled one-token step (CUDA graphs), the cache sized for the longest prompt and generation
    asked for at construction, so each batch size compiles once."""

    def __init__(self, model: Transformer, slots: int, compile: bool = True):
        self.model, self.slots, self.batch = model, slots, None
        self.prefill = torch.compile(model, fullgraph=True, dynamic=True) if compile else model
        self.step = torch.compile(model, mode="reduce-overhead", fullgraph=True) if compile else model

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]], n: int) -> list[int]:
        ids = torch.tensor(prompts, device=self.model.output.weight.device)
        if ids.shape[0] != self.batch:
            self.model.setup_cache(ids.shape[0], self.slots)
            self.batch = ids.shape[0]
        length = ids.shape[1]
        token = self.prefill(ids, torch.arange(length, device=ids.device)).argmax(-1, keepdim=True)
        tokens = [token]
        for i in range(n - 1):
            position = torch.tensor([length + i], device=ids.device)
            token = self.step(token, position).argmax(-1, keepdim=True).clone()
            tokens.append(token)
        return torch.cat(tokens, dim=1)[0].tolist()
