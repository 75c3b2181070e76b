"""Generation speed and memory: llama_tf against keras-hub, Hugging Face transformers and llama.cpp.

    python benchmarks/decode.py                       # every shape, dtype and peer (tens of minutes)
    python benchmarks/decode.py --shapes 134m --dtypes float32

The script makes random weights in Hugging Face's layout (transformers, seeded), converts them for each
peer (keras-hub: ported variable by variable; llama.cpp: a GGUF written by `llama_tf.formats.gguf`, q/k
rows in Meta's layout) and measures every peer in its own process, on the same prompts, greedy:

- prefill: tokens/s of a 512-token prompt (time to the first new token);
- decode: new tokens/s at batch 1 and 8 after a 32-token prompt, excluding the prefill
  ((n - 1) new tokens ÷ (time for n new tokens − time for 1)), and at batch 1 end to end (n new
  tokens ÷ the time for them, the prompt included);
- time to the first token of an 8-token prompt;
- peak resident memory of the process (`ru_maxrss`), and as a multiple of the weights' bytes.

dtype `q4_k_m` is the GGUF that llama.cpp quantises from the float32 one (Q4_K_M, what most people
download), `q8_0` its Q8_0: llama.cpp runs it as it is, llama_tf loads the same file with every tensor
held as stored (`dtype="gguf"`); the weights' bytes are then the file's.

Every figure is also given as a ratio to llama_tf's, and llama_tf's decode as a fraction of the bound
that memory bandwidth sets: bytes of weights read per token ÷ a measured large matrix-vector read rate.
Needs the benchmark extra (`pip install -e .[bench]`) and the LLaMA tokenizer (for the GGUF
vocabulary; default `../shared/tokenizers/llama/tokenizer.model`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LLAMA32_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
LLAMA3 = dict(n_heads=32, n_kv_heads=8, vocab_size=128_256, rope_theta=500_000.0, max_seq_len=131_072)
SHAPES = {  # LlamaConfig fields
    "134m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, hidden_dim=2048, vocab_size=32000),
    "tinyllama-1.1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632, vocab_size=32000),
    # Llama 3.2 1B and Llama 3.1 8B: random weights written shard by shard as Hugging Face shards them.
    "llama3.2-1b": dict(dim=2048, n_layers=16, hidden_dim=8192, tie_embeddings=True,
                        rope_scaling=LLAMA32_SCALING, **LLAMA3),
    "llama3.1-8b": dict(dim=4096, n_layers=32, hidden_dim=14336, tie_embeddings=False,
                        rope_scaling={**LLAMA32_SCALING, "factor": 8.0}, **LLAMA3),
}
SHARDED = {"llama3.2-1b", "llama3.1-8b"}
PEERS = ["llama_tf", "keras_hub", "transformers", "llama_cpp"]
# also: llama_tf_graph, llama_tf_plain, llama_tf_jax, llama_tf_jax_xla
# Tasks whose process needs its own environment: TensorFlow with llama_tf's ops off (its own products);
# llama_tf on the JAX backend, one-token products by the compiled kernel (llama_tf.kernels) or, with the
# kernels off, by XLA's; the kernel's read rate (JAX).
TASK_ENV = {"llama_tf_plain": {"LLAMA_TF_KERNELS": "0"},
            "llama_tf_jax": {"KERAS_BACKEND": "jax"}, "llama_tf_jax_xla": {"KERAS_BACKEND": "jax", "LLAMA_TF_KERNELS": "0"},
            "kernel_bandwidth": {"KERAS_BACKEND": "jax"}}
# The 8B model on 2 cores: a shorter prefill, fewer new tokens, batch 1, one timed run (minutes per peer).
# In float32 it would need 30 GiB: bfloat16 only.
RUNS = {"llama3.1-8b": dict(prefill=64, batches=(1,), repeats=1, new_tokens=8, dtypes=("bfloat16", "q4_k_m"))}
PREFILL_TOKENS, PROMPT_TOKENS, BATCH = 512, 32, 8
# Made by llama.cpp from the float32 GGUF (the Llama 3 shapes: from the bfloat16 one, as their checkpoints are;
# the 8B's float32 GGUF would be 32 GB).
QUANTISED = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


# ---------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON line.

def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _prompts(vocab: int, batch: int, length: int) -> list[list[int]]:
    rng = np.random.default_rng(length)
    return [[1] + rng.integers(3, vocab, length - 1).tolist() for _ in range(batch)]


def _measure(generate, vocab: int, new_tokens: int, batches=(1, BATCH), repeats: int = 2,
             prefill: int = PREFILL_TOKENS) -> dict:
    """`generate(prompts, n)` must produce n new tokens for every prompt and return the first row's.
    Best of `repeats` runs; `tokens`: 8 greedy tokens after the first 32-token prompt (peers must agree)."""
    def best(prompts, n):
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            generate(prompts, n)
            times.append(time.perf_counter() - begin)
        return min(times)

    generate(_prompts(vocab, 1, 8), 2)                                     # warm-up (compilation)
    result = {"tokens": [int(t) for t in generate(_prompts(vocab, 1, PROMPT_TOKENS), 8)],"prefill": prefill / best(_prompts(vocab, 1, prefill), 1),
              "first_token_8_s": best(_prompts(vocab, 1, 8), 1)}
    for batch in batches:
        prompts = _prompts(vocab, batch, PROMPT_TOKENS)
        first, full = best(prompts, 1), best(prompts, new_tokens)
        result[f"decode_b{batch}"] = batch * (new_tokens - 1) / (full - first)
        if batch == 1:   # the whole generation, prompt included, as a user waits for it
            result["end_to_end_b1"] = new_tokens / full
    return result


def worker_llama_tf(model_dir: Path, dtype: str, tokenizer: Path, new_tokens: int, run: dict,
                    xla: bool | None = None, **_) -> dict:
    """llama_tf's default decode route: on TensorFlow, XLA's steps, whose one-token products and attention
    are llama_tf's kernels as custom calls (`llama_tf_graph`: the graph's steps, whose one-token products
    are llama_tf's ops; `llama_tf_plain`: the kernels off, TensorFlow's products, as before issue 13)."""
    import llama_tf
    from llama_tf.generation import Decoder
    from llama_tf.sampling import Sampler

    baseline, begin = _peak_rss(), time.perf_counter()
    if dtype in QUANTISED:   # the GGUF llama.cpp runs, its vocabulary inside, every tensor held as stored
        llm = llama_tf.load(model_dir / f"model-{dtype}.gguf", dtype="gguf")
    else:
        llm = llama_tf.load(model_dir, tokenizer=tokenizer, dtype=dtype)
    load_s = time.perf_counter() - begin
    decoder = Decoder(llm.model, llm.config.max_seq_len, xla=xla)

    def generate(prompts, n):
        return [int(step[0]) for step in decoder(prompts, n, Sampler(), stop_ids=())]
    return {**_measure(generate, llm.config.vocab_size, new_tokens, **run), "baseline_rss": baseline, "load_s": load_s}


def worker_transformers(model_dir: Path, dtype: str, new_tokens: int, run: dict, **_) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(os.cpu_count())
    baseline, begin = _peak_rss(), time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - begin

    def generate(prompts, n):
        ids = torch.tensor(prompts)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        return out[0, ids.shape[1]:].tolist()
    return {**_measure(generate, model.config.vocab_size, new_tokens, **run), "baseline_rss": baseline, "load_s": load_s}


def keras_hub_causal_lm(model_dir: Path, dtype: str, jit_compile: bool = True):
    "keras-hub's `LlamaCausalLM` (greedy, no preprocessor) with the weights of an HF checkpoint, ported by hand."
    import keras_hub
    from safetensors.numpy import load_file

    hf = json.loads((model_dir / "config.json").read_text())
    scaling = hf.get("rope_scaling") or {}
    llama3_rope = dict(rope_frequency_adjustment_factor=scaling["factor"], rope_low_freq_factor=scaling["low_freq_factor"],
                       rope_high_freq_factor=scaling["high_freq_factor"],
                       rope_pretraining_sequence_length=scaling["original_max_position_embeddings"]) \
        if scaling.get("rope_type") == "llama3" else {}
    tied = hf.get("tie_word_embeddings", False)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        num_query_heads=hf["num_attention_heads"], hidden_dim=hf["hidden_size"],
        intermediate_dim=hf["intermediate_size"], num_key_value_heads=hf["num_key_value_heads"],
        rope_max_wavelength=hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"],
        layer_norm_epsilon=hf["rms_norm_eps"], tie_word_embeddings=tied, dtype=dtype, **llama3_rope)
    weights = load_file(model_dir / "model.safetensors")  # keras-hub's own HF converter, by hand

    def port(variable, name, transpose=False):
        w = weights.pop(name).astype("float32")
        variable.assign(np.reshape(w.T if transpose else w, variable.shape))

    port(backbone.get_layer("token_embedding").embeddings, "model.embed_tokens.weight")
    if not tied:
        port(backbone.get_layer("token_embedding").reverse_embeddings, "lm_head.weight", transpose=True)
    for i in range(backbone.num_layers):
        layer, prefix = backbone.get_layer(f"transformer_layer_{i}"), f"model.layers.{i}."
        attention = layer._self_attention_layer
        port(layer._self_attention_layernorm.scale, prefix + "input_layernorm.weight")
        port(layer._feedforward_layernorm.scale, prefix + "post_attention_layernorm.weight")
        for dense, name in [(attention._query_dense, "q_proj"), (attention._key_dense, "k_proj"),
                            (attention._value_dense, "v_proj"), (attention._output_dense, "o_proj")]:
            port(dense.kernel, f"{prefix}self_attn.{name}.weight", transpose=True)
        for dense, name in [(layer._feedforward_gate_dense, "gate_proj"),
                            (layer._feedforward_intermediate_dense, "up_proj"),
                            (layer._feedforward_output_dense, "down_proj")]:
            port(dense.kernel, f"{prefix}mlp.{name}.weight", transpose=True)
    port(backbone.get_layer("sequence_output_layernorm").scale, "model.norm.weight")
    del weights
    causal_lm = keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)
    causal_lm.compile(sampler="greedy")
    causal_lm.jit_compile = jit_compile
    causal_lm.generate_function = None
    return causal_lm


def keras_hub_generate(causal_lm, prompts, n: int) -> list[int]:
    "n greedy tokens after each prompt (equal lengths); the first row's."
    ids = np.array(prompts, "int32")
    tokens = np.concatenate([ids, np.zeros((len(ids), n), "int32")], axis=1)
    mask = np.concatenate([np.ones_like(ids, bool), np.zeros((len(ids), n), bool)], axis=1)
    out = causal_lm.generate({"token_ids": tokens, "padding_mask": mask}, stop_token_ids=None)
    return np.asarray(out["token_ids"])[0, ids.shape[1]:].tolist()


def worker_keras_hub(model_dir: Path, dtype: str, new_tokens: int, run: dict, jit_compile: bool = False, **_) -> dict:
    baseline, begin = _peak_rss(), time.perf_counter()
    hf = json.loads((model_dir / "config.json").read_text())
    causal_lm = keras_hub_causal_lm(model_dir, dtype, jit_compile)
    load_s = time.perf_counter() - begin

    def generate(prompts, n):
        return keras_hub_generate(causal_lm, prompts, n)
    # Under XLA every new input shape compiles first (minutes on this CPU), so the jit run measures fewer
    # tokens and batch 1 only; best of 2 leaves the compilation out.
    measured = _measure(generate, hf["vocab_size"], 8 if jit_compile else new_tokens,
                        **{**run, "batches": (1,)} if jit_compile else run)
    import keras

    keras.backend.clear_session()
    return {**measured, "baseline_rss": baseline, "load_s": load_s}


def worker_llama_cpp(model_dir: Path, dtype: str, new_tokens: int, run: dict, **_) -> dict:
    "llama.cpp through llama-cpp-python's C API, which (unlike its `Llama` class) decodes several sequences."
    import llama_cpp as cpp

    baseline, begin = _peak_rss(), time.perf_counter()
    cpp.llama_backend_init()
    model = cpp.llama_model_load_from_file(str(model_dir / f"model-{dtype}.gguf").encode(), cpp.llama_model_default_params())
    params = cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 2048, PREFILL_TOKENS, PREFILL_TOKENS, BATCH
    params.n_threads = params.n_threads_batch = os.cpu_count()
    params.kv_unified = True                                   # any sequence may use the whole context
    ctx = cpp.llama_init_from_model(model, params)
    vocab = cpp.llama_vocab_n_tokens(cpp.llama_model_get_vocab(model))
    batch = cpp.llama_batch_init(PREFILL_TOKENS, 0, BATCH)
    load_s = time.perf_counter() - begin

    def decode(entries) -> list[int]:
        "entries: (token, position, sequence); returns the greedy next token of each sequence's last entry."
        batch.n_tokens = len(entries)
        last = {seq: i for i, (_, _, seq) in enumerate(entries)}
        for i, (token, position, seq) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = seq, i in last.values()
        if cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return [int(np.ctypeslib.as_array(cpp.llama_get_logits_ith(ctx, i), shape=(vocab,)).argmax())
                for i in last.values()]

    def generate(prompts, n):
        cpp.llama_memory_clear(cpp.llama_get_memory(ctx), True)
        tokens = decode([(t, p, s) for s, prompt in enumerate(prompts) for p, t in enumerate(prompt)])
        first = [tokens[0]]
        for step in range(n - 1):
            tokens = decode([(t, len(prompts[s]) + step, s) for s, t in enumerate(tokens)])
            first.append(tokens[0])
        return first
    return {**_measure(generate, vocab, new_tokens, **run), "baseline_rss": baseline, "load_s": load_s}


def worker_kernel_bandwidth(**_) -> dict:
    "Read rate (bytes/s) of llama_tf's compiled float32 matrix-vector kernel on a 256 MiB matrix (JAX)."
    import jax

    from llama_tf import kernels

    if not kernels.available():
        return {"error": "the kernels could not be built"}
    matrix = jax.random.normal(jax.random.key(0), (8192, 8192))
    vector = jax.random.normal(jax.random.key(1), (1, 8192))
    product = jax.jit(lambda v, m: kernels.matvec(v, m, out_in=True))
    product(vector, matrix).block_until_ready()
    times = []
    for _ in range(30):
        begin = time.perf_counter()
        product(vector, matrix).block_until_ready()
        times.append(time.perf_counter() - begin)
    return {"read_rate": matrix.size * 4 / min(times)}


def worker_bandwidth(**_) -> dict:
    "Read rate (bytes/s) of TensorFlow's float32 matrix-vector product on a 256 MiB matrix."
    import tensorflow as tf

    matrix, vector = tf.random.normal((8192, 8192)), tf.random.normal((1, 8192))
    product = tf.function(lambda v: tf.matmul(v, matrix))
    product(vector).numpy()
    times = []
    for _ in range(30):
        begin = time.perf_counter()
        product(vector).numpy()
        times.append(time.perf_counter() - begin)
    return {"read_rate": matrix.shape[0] * matrix.shape[1] * 4 / min(times)}


WORKERS = {"llama_tf": worker_llama_tf, "transformers": worker_transformers, "keras_hub": worker_keras_hub,
           "llama_cpp": worker_llama_cpp, "bandwidth": worker_bandwidth, "kernel_bandwidth": worker_kernel_bandwidth,
           "llama_tf_graph": lambda **kw: worker_llama_tf(xla=False, **kw),
           "llama_tf_plain": worker_llama_tf, "llama_tf_jax": worker_llama_tf, "llama_tf_jax_xla": worker_llama_tf}


# ---------------------------------------------------------------------------------------------------
# Preparing the weights (also in their own processes, so that no peer inherits their memory).

def make_hf_weights(model_dir: Path, shape: str, dtype: str, **_) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_tf.formats.hf import hf_config
    from llama_tf.config import LlamaConfig as Config

    torch.manual_seed(0)
    # A wider initialisation than transformers' 0.02, so that greedy decoding does not settle on one
    # token at once and the peers' token sequences are a real check of the conversions.
    config = LlamaConfig(**hf_config(Config(**SHAPES[shape], max_seq_len=2048)), initializer_range=0.05)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(model_dir)                       # config.json + model.safetensors
    return {}


SHARD_BYTES = 5 * 10**9   # transformers' default max_shard_size, "5GB"


def make_sharded_weights(model_dir: Path, shape: str, dtype: str, **_) -> dict:
    """Random weights (normal, std 0.02; norm gains 1) in Hugging Face's names and order, written one
    tensor at a time into shards of at most 5 GB with their index, as `save_pretrained` writes a large
    model: nothing but the tensor being made is in memory (an 8B model in float32 would not fit)."""
    import torch
    from safetensors.torch import save_file

    from llama_tf.formats.hf import hf_config
    from llama_tf.config import LlamaConfig as Config

    config = Config(**SHAPES[shape])
    kv = config.n_kv_heads * config.head_dim
    layer = {"input_layernorm": (config.dim,), "self_attn.q_proj": (config.dim, config.dim),
             "self_attn.k_proj": (kv, config.dim), "self_attn.v_proj": (kv, config.dim),
             "self_attn.o_proj": (config.dim, config.dim), "post_attention_layernorm": (config.dim,),
             "mlp.gate_proj": (config.hidden_dim, config.dim), "mlp.up_proj": (config.hidden_dim, config.dim),
             "mlp.down_proj": (config.dim, config.hidden_dim)}
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.dim),
              **{f"model.layers.{i}.{name}.weight": size for i in range(config.n_layers) for name, size in layer.items()},
              "model.norm.weight": (config.dim,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.dim)
    generator = torch.Generator().manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    shards, current, size = [], {}, 0
    for name, tensor_shape in shapes.items():
        n = int(np.prod(tensor_shape)) * torch.finfo(torch_dtype).bits // 8
        if current and size + n > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor_shape, size + n
    shards.append(current)
    model_dir.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        tensors = {name: (torch.ones(size) if len(size) == 1 else torch.randn(size, generator=generator) * 0.02)
                   .to(torch_dtype) for name, size in shard.items()}
        save_file(tensors, model_dir / file, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(shard, file))
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (model_dir / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2))
    # Llama 3's tokenizer.json, converted from Meta's tokenizer.model by transformers (as the Hub's was).
    import llama_models
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from llama_tf.tokenizers.tiktoken_tokenizer import LLAMA3_SPECIAL_TOKENS

    ranks = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    TikTokenConverter(vocab_file=str(ranks), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted() \
        .save(str(model_dir / "tokenizer.json"))
    return {}


def make_gguf(model_dir: Path, dtype: str, tokenizer: Path, **_) -> dict:
    """model-<dtype>.gguf from the HF checkpoint, by llama_tf's own writer (`llama_tf.formats.gguf`): q/k
    rows in Meta's layout, norms in float32, matrices in `dtype`, Llama 3's rescaling as `rope_freqs`,
    the vocabulary of `tokenizer` (LLaMA's SentencePiece model, or Llama 3's tokenizer.json)."""
    import llama_tf
    from llama_tf.formats import read_checkpoint
    from llama_tf.formats.gguf import write_gguf
    from llama_tf.tokenizers.embedded_tokenizers import gguf_vocabulary

    checkpoint = read_checkpoint(model_dir)
    write_gguf(model_dir / f"model-{dtype}.gguf", checkpoint.config,
               {name: ref.load for name, ref in checkpoint.tensors.items()}, gguf_vocabulary(llama_tf.Tokenizer(tokenizer)),
               {"float32": "F32", "bfloat16": "BF16"}[dtype])
    return {}


def quantize(model_dir: Path, dtype: str, source: str = "float32", **_) -> dict:
    "model-<dtype>.gguf from model-<source>.gguf, by llama.cpp's quantizer (the gguf package cannot write K-quants)."
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTISED[dtype])
    params.nthread = os.cpu_count()
    source, target = model_dir / f"model-{source}.gguf", model_dir / f"model-{dtype}.gguf"
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source} to {dtype}")
    return {}


TASKS = {**WORKERS, "quantize": quantize, "make_hf_weights": make_hf_weights, "make_sharded_weights": make_sharded_weights,
         "make_gguf": make_gguf}


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options every benchmark script here shares: where the weights go, the raw JSON, and the two
    hidden ones by which `run_task` starts a worker process."""
    p.add_argument("--workdir", type=Path, help="where the weights are written (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--task-args", help=argparse.SUPPRESS)


def run_worker(args, tasks: dict, path_keys=("model_dir",), with_peak_rss: bool = False) -> bool:
    "In a worker process (`--task`): run the task, print its result as one JSON line, return True."
    if not args.task:
        return False
    kwargs = {k: Path(v) if k in path_keys else v for k, v in json.loads(args.task_args).items()}
    result = tasks[args.task](**kwargs)
    print(json.dumps({**result, "peak_rss": _peak_rss()} if with_peak_rss else result))
    return True


def run_task(task: str, timeout: float | None = None, script: str = __file__, **kwargs) -> dict:
    """Runs `task` of `script` (this one, or gpu_decode.py) in a fresh Python process, with the task's
    environment (`TASK_ENV`); its result, or {'error': ...}."""
    command = [sys.executable, script, "--task", task, "--task-args", json.dumps(kwargs, default=str)]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])   # llama_tf, installed or not
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path, **TASK_ENV.get(task, {})}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"{task} did not finish in {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------
# The report

def weight_bytes(model_dir: Path) -> tuple[int, int]:
    "(bytes of all weights, bytes read per generated token: all but the embedding rows not looked up)."
    from safetensors import safe_open

    total = per_token = 0
    files = sorted(model_dir.glob("*.safetensors"))
    tied = not any("lm_head.weight" in safe_open(file, "np").keys() for file in files)
    for file in files:
        with safe_open(file, "np") as f:
            for name in f.keys():
                size = f.get_slice(name)
                n = np.prod(size.get_shape()) * {"F32": 4, "BF16": 2, "F16": 2}[size.get_dtype()]
                total += n
                per_token += 0 if name == "model.embed_tokens.weight" and not tied else n
    return int(total), int(per_token)


def gguf_bytes(path: Path) -> tuple[int, int]:
    "(bytes of a GGUF file, bytes of its tensors read per generated token: all but an untied embedding table)."
    import gguf

    tensors = gguf.GGUFReader(path).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    return path.stat().st_size, int(sum(t.n_bytes for t in tensors if tied or t.name != "token_embd.weight"))


def versions() -> str:
    "The peers' package versions (a run of some peers needs only theirs installed)."
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    packages = ["tensorflow", "keras", "keras-hub", "torch", "transformers", "llama-cpp-python", "gguf"]
    return ", ".join(f"{p} {installed(p)}" for p in packages)


def best_of_rounds(runs: list[dict]) -> list[dict]:
    """One row per (shape, dtype, peer): its first round's (its first that did not fail), with each speed the
    best over the rounds."""
    rows = {}
    for run in sorted(runs, key=lambda run: "error" in run):   # stable: the rounds' order otherwise
        if "error" in run and (run["shape"], run["dtype"], run["peer"]) in rows:
            continue
        key = (run["shape"], run["dtype"], run["peer"])
        if key not in rows:
            rows[key] = dict(run)
            continue
        for name in ("prefill", "decode_b1", f"decode_b{BATCH}"):
            if name in run:
                rows[key][name] = max(rows[key].get(name, 0), run[name])
    return list(rows.values())


def against_llama_cpp(rows: list[dict], read_rates: dict) -> list[str]:
    "Each llama_tf route's batch-1 decode as a multiple of llama.cpp's at the same precision, and its GB/s of weights."
    lines = ["", "Batch-1 decode against llama.cpp at the same precision (same run), and the weights each route reads a second "
             "(" + ", ".join(f"{name}: {rate / 1e9:.1f} GB/s" for name, rate in read_rates.items() if rate) + "):"]
    for row in rows:
        cpp = next((r for r in rows if r["peer"] == "llama_cpp" and r["shape"] == row["shape"]
                    and r["dtype"] == row["dtype"] and "decode_b1" in r), None)
        if cpp is None or "decode_b1" not in row or not row["peer"].startswith("llama_tf"):
            continue
        lines.append(f"- {row['shape']} {row['dtype']} {row['peer']}: {row['decode_b1']:.1f} tok/s = "
                     f"{row['decode_b1'] / cpp['decode_b1']:.2f}× llama.cpp's {cpp['decode_b1']:.1f}; "
                     f"{row['decode_b1'] * row['per_token'] / 1e9:.1f} GB/s (llama.cpp "
                     f"{cpp['decode_b1'] * cpp['per_token'] / 1e9:.1f})")
    return lines


def report(rows: list[dict], read_rate: float, kernel_rate: float | None = None) -> str:
    lines = ["| shape | dtype | peer | load s | prefill tok/s | first token (8) s | decode b1 tok/s | end to end b1 tok/s "
             "| decode b8 tok/s | peak RSS GiB (× weights; above the process's baseline after imports) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours = next((r for r in rows if r["shape"] == row["shape"] and r["dtype"] == row["dtype"]
                     and r["peer"] == "llama_tf"), {})
        if "error" in row:
            lines.append(f"| {row['shape']} | {row['dtype']} | {row['peer']} | error: {row['error'][:80]} |||||||")
            continue

        def cell(key):
            if key not in row:
                return "—"
            ratio = f" ({row[key] / ours[key]:.2f}×)" if key in ours and row["peer"] != "llama_tf" else ""
            return f"{row[key]:.3g}{ratio}" if key == "first_token_8_s" else f"{row[key]:.1f}{ratio}"
        memory = f"{row['peak_rss'] / 2**30:.2f} ({row['peak_rss'] / row['weights']:.2f}×"
        if "baseline_rss" in row:   # what the model added to the process after its imports
            memory += f"; above the baseline {(row['peak_rss'] - row['baseline_rss']) / row['weights']:.2f}×"
        memory += ")"
        lines.append(f"| {row['shape']} | {row['dtype']} | {row['peer']} | {cell('load_s')} | {cell('prefill')} | "
                     f"{cell('first_token_8_s')} | {cell('decode_b1')} | {cell('end_to_end_b1')} | {cell('decode_b8')} | "
                     f"{memory} |")
    lines.append("")
    for row in rows:
        ours = next((r for r in rows if r["shape"] == row["shape"] and r["dtype"] == row["dtype"]
                     and r["peer"] == "llama_tf"), {})
        if "tokens" in row and "tokens" in ours and row["tokens"] != ours["tokens"]:
            lines.append(f"- {row['shape']} {row['dtype']} {row['peer']}: greedy tokens differ from llama_tf's: "
                         f"{row['tokens']} vs {ours['tokens']}")
    lines.append(f"Matrix-vector read rate (TensorFlow, float32, 256 MiB matrix): {read_rate / 1e9:.1f} GB/s.")
    for row in rows:
        if row["peer"] == "llama_tf" and "decode_b1" in row:
            bound = read_rate / row["per_token"]
            lines.append(f"- {row['shape']} {row['dtype']}: {row['per_token'] / 1e6:.0f} MB of weights per token, "
                         f"bound {bound:.1f} tok/s; llama_tf decodes at {row['decode_b1'] / bound:.0%} of it "
                         f"(process baseline after imports: {row['baseline_rss'] / 2**30:.2f} GiB)")
    lines += against_llama_cpp(rows, {"TensorFlow's matrix-vector product": read_rate,
                                      "llama_tf's compiled kernel": kernel_rate})
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batches", default="1,8", help="decode batch sizes (default 1,8)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the peers this many times in turn (interleaved) and keep each one's best figures")
    p.add_argument("--tokenizer", type=Path, default=ROOT.parent / "shared/tokenizers/llama/tokenizer.model")
    p.add_argument("--xla-timeout", type=float, default=900, help="seconds allowed to keras-hub's XLA run")
    add_common_options(p)
    args = p.parse_args(argv)
    if run_worker(args, TASKS, path_keys=("model_dir", "tokenizer"), with_peak_rss=True):
        return 0

    if not args.tokenizer.is_file():
        p.error(f"tokenizer not found: {args.tokenizer} (pass --tokenizer)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llama_tf_bench_"))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {versions()}", flush=True)
    read_rate = run_task("bandwidth")["read_rate"]
    kernel_rate = run_task("kernel_bandwidth").get("read_rate")
    runs = []
    for shape in args.shapes.split(","):
        for dtype in [d for d in args.dtypes.split(",") if d in RUNS.get(shape, {}).get("dtypes", (d,))]:
            # Llama 3 shapes: one bfloat16 checkpoint (as published), loaded in each dtype.
            # Quantised GGUFs: made from the float32 checkpoint's GGUF.
            source_dtype = "float32" if dtype in QUANTISED else dtype
            model_dir = workdir / (shape if shape in SHARDED else f"{shape}-{source_dtype}")
            if not (model_dir / "config.json").exists():
                run_task("make_sharded_weights" if shape in SHARDED else "make_hf_weights",
                         model_dir=model_dir, shape=shape, dtype="bfloat16" if shape in SHARDED else source_dtype)
            total, per_token = weight_bytes(model_dir)
            if shape in SHARDED and source_dtype == "float32":     # a bfloat16 file, held in float32
                total, per_token = 2 * total, 2 * per_token
            run = {"batches": tuple(int(b) for b in args.batches.split(",")),
                   **{k: v for k, v in RUNS.get(shape, {}).items() if k != "dtypes"}}
            new_tokens = run.pop("new_tokens", args.new_tokens)
            # Llama 3 shapes carry their tokenizer.json (written with the weights), as downloads do.
            tokenizer = model_dir / "tokenizer.json" if shape in SHARDED else args.tokenizer
            if dtype in QUANTISED and not (model_dir / f"model-{dtype}.gguf").exists():
                gguf_source = "bfloat16" if shape in SHARDED else "float32"
                if not (model_dir / f"model-{gguf_source}.gguf").exists():
                    run_task("make_gguf", model_dir=model_dir, dtype=gguf_source, tokenizer=tokenizer)
                run_task("quantize", model_dir=model_dir, dtype=dtype, source=gguf_source)
            if dtype in QUANTISED:   # read as stored: the file's bytes
                total, per_token = gguf_bytes(model_dir / f"model-{dtype}.gguf")
            for round_, peer in [(r, p) for r in range(args.rounds) for p in args.peers.split(",")]:
                if peer == "keras_hub" and shape == "llama3.1-8b":
                    continue   # keras-hub's port reads the whole checkpoint into memory, in float32
                if dtype in QUANTISED and not peer.startswith(("llama_tf", "llama_cpp")):
                    continue   # the others read no GGUF
                if peer == "llama_cpp" and not (model_dir / f"model-{dtype}.gguf").exists():
                    run_task("make_gguf", model_dir=model_dir, dtype=dtype, tokenizer=tokenizer)
                variants = [False, True] if peer == "keras_hub" and shape == "134m" else [False]
                results = [run_task(peer, timeout=args.xla_timeout if jit else None, model_dir=model_dir, dtype=dtype,
                                    tokenizer=tokenizer, new_tokens=new_tokens, jit_compile=jit, run=run)
                           for jit in variants]
                result = results[0]
                for other in results[1:]:   # keras-hub under XLA: keep the better figures
                    result = {**result, "jit_compile": other}
                    for key in ("prefill", "decode_b1"):
                        if key in result and other.get(key, 0) > result[key]:
                            result[key] = other[key]
                row = {"shape": shape, "dtype": dtype, "peer": peer, "round": round_, "weights": total,
                       "per_token": per_token, **result}
                runs.append(row)
                print(json.dumps(row), flush=True)
    rows = best_of_rounds(runs)
    print()
    print(report(rows, read_rate, kernel_rate))
    if args.json:
        args.json.write_text(json.dumps({"read_rate": read_rate, "kernel_read_rate": kernel_rate, "rows": rows,
                                         "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
