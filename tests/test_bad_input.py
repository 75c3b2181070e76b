"""Bad input gets an error that names the problem, and loses nothing: checkpoints, tokenizers, generation."""

import contextlib
import json
import os
import pickle
import re
import shutil
import signal

import numpy as np
import pytest

import llama_tf
from llama_tf import CheckpointError
from conftest import require
from reference import hf_model, write_hf, write_meta


@pytest.fixture(scope="module")
def model():
    return hf_model(num_key_value_heads=2)


@pytest.fixture
def hf_dir(model, tmp_path, tiny_tokenizer_proto):
    return write_hf(model, tmp_path / "hf", tiny_tokenizer_proto)


@pytest.fixture
def meta_dir(model, tmp_path, tiny_tokenizer_proto):
    return write_meta(model, tmp_path / "meta" / "tiny", tiny_tokenizer_proto)


def truncate(file, fraction=0.5):
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * fraction)])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nowhere"):
        llama_tf.load(tmp_path / "nowhere")


def test_folder_that_is_no_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a LLaMA checkpoint.*params.json.*config.json"):
        llama_tf.load(tmp_path)


def test_no_path_no_environment_variable_and_no_default_model(monkeypatch, tmp_path):
    import llama_tf.llm

    monkeypatch.delenv("LLAMA_TF_WEIGHTS", raising=False)
    monkeypatch.setattr(llama_tf.llm, "DEFAULT_WEIGHTS", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="default model is missing .*missing.*LLAMA_TF_WEIGHTS"):
        llama_tf.load()


def test_environment_variable_names_the_checkpoint(monkeypatch, hf_dir, tmp_path):
    monkeypatch.setenv("LLAMA_TF_WEIGHTS", str(hf_dir))
    assert llama_tf.load().config.dim == 64
    monkeypatch.setenv("LLAMA_TF_WEIGHTS", str(tmp_path / "moved"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*moved"):
        llama_tf.load()


def test_missing_tensor_is_named(hf_dir):
    from safetensors.numpy import load_file, save_file

    file = hf_dir / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"no tensor 'layers\.1\.feed_forward\.w3\.weight'"):
        llama_tf.load(hf_dir)


def test_shape_disagreeing_with_config_names_both(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] = 128
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"layers\.0\.feed_forward\.w1\.weight.*gate_proj.*\(172, 64\).*expects \(128, 64\)"):
        llama_tf.load(hf_dir)


def test_tensor_that_llama_does_not_have(hf_dir):
    from safetensors.numpy import load_file, save_file

    file = hf_dir / "model.safetensors"
    tensors = load_file(file)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, "float32")
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not part of a LLaMA model.*q_proj.bias"):
        llama_tf.load(hf_dir)


def test_truncated_safetensors(hf_dir):
    truncate(hf_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        llama_tf.load(hf_dir)


def test_missing_shard_listed_in_index(model, tmp_path, tiny_tokenizer_proto):
    directory = write_hf(model, tmp_path / "hf", tiny_tokenizer_proto, max_shard_size="60KB")
    victim = sorted(directory.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"{victim.name}, listed in model.safetensors.index.json"):
        llama_tf.load(directory)


def test_truncated_pth(meta_dir):
    truncate(meta_dir / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="consolidated.00.pth: not a readable PyTorch checkpoint"):
        llama_tf.load(meta_dir)


class _RunsCode:
    "Unpickling this runs a shell command: what a hostile checkpoint would do."

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pth_that_would_run_code_is_refused(meta_dir, tmp_path):
    torch = require("torch")
    marker = tmp_path / "pwned"
    state = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    state["norm.weight"] = _RunsCode(marker)
    torch.save(state, meta_dir / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="refused to load.*pickled Python objects"):
        llama_tf.load(meta_dir)
    assert not marker.exists()


def test_shards_with_different_tensors(model, tmp_path, tiny_tokenizer_proto):
    torch = require("torch")
    directory = write_meta(model, tmp_path / "meta" / "tiny", tiny_tokenizer_proto, n_shards=2)
    shard = torch.load(directory / "consolidated.01.pth", weights_only=True)
    del shard["layers.1.ffn_norm.weight"]
    torch.save(shard, directory / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth: holds different tensors.*layers\.1\.ffn_norm"):
        llama_tf.load(directory)


def test_params_json_that_is_not_json(meta_dir):
    (meta_dir / "params.json").write_text("{dim: 64,")
    with pytest.raises(CheckpointError, match="params.json: not valid JSON"):
        llama_tf.load(meta_dir)


def test_params_json_missing_a_field(meta_dir):
    params = json.loads((meta_dir / "params.json").read_text())
    del params["n_heads"]
    (meta_dir / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match="params.json:.*n_heads"):
        llama_tf.load(meta_dir)


@pytest.mark.parametrize("rope, message", [
    ({"rope_type": "yarn", "factor": 4.0}, "RoPE scaling 'yarn' is not supported; llama_tf implements 'default', 'linear' and 'llama3'"),
    ({"rope_type": "dynamic", "factor": 2.0}, "RoPE scaling 'dynamic' is not supported"),
    ({"rope_type": "llama3", "factor": 8.0}, "RoPE scaling 'llama3' needs low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    ({"rope_type": "linear", "factor": 0}, "RoPE scaling 'linear': factor must be a positive number, got 0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, "low_freq_factor \\(4.0\\) must be below high_freq_factor"),
], ids=["yarn", "dynamic", "llama3-incomplete", "linear-zero", "llama3-no-band"])
def test_unsupported_or_malformed_rope_scaling_is_named(hf_dir, rope, message):
    config = json.loads((hf_dir / "config.json").read_text())
    config["rope_parameters"] = {**rope, "rope_theta": 500000.0}
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"config.json: .*{message}"):
        llama_tf.load(hf_dir)


def test_missing_tokenizer(hf_dir):
    (hf_dir / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json in .* pass tokenizer="):
        llama_tf.load(hf_dir)


def test_tokenizer_can_be_given(hf_dir, tmp_path):
    shutil.move(hf_dir / "tokenizer.model", tmp_path / "elsewhere.model")
    assert llama_tf.load(hf_dir, tokenizer=tmp_path / "elsewhere.model").tokenizer.vocab_size <= 384


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        llama_tf.Tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        llama_tf.Tokenizer(tmp_path / "junk.model")
    for nothing in (None, 3):
        with pytest.raises(llama_tf.TokenizerError, match="opened from a file's path or bytes"):
            llama_tf.Tokenizer(nothing)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        llama_tf.Tokenizer(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def llm(model, tmp_path_factory, tiny_tokenizer_proto):
    return llama_tf.load(write_hf(model, tmp_path_factory.mktemp("llm"), tiny_tokenizer_proto), max_seq_len=32)


@pytest.mark.parametrize("value", [-1, 2.5, "10", True, None])
def test_invalid_max_new_tokens(llm, value):
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        llm.generate("Simple is better", max_new_tokens=value)


def test_prompt_longer_than_the_context(llm):
    with pytest.raises(ValueError, match=r"the prompt is \d+ tokens, longer than the model's context of 32"):
        llm.generate("Beautiful is better than ugly. " * 10)


def test_generation_stops_when_the_context_is_full(llm):
    prompt = llm.tokenizer.tokenize("Beautiful is better than ugly.").numpy().tolist()
    assert len(prompt) + len(llm.generate_ids(prompt, max_new_tokens=100)) <= 32


def test_continuation_reads_on_from_the_prompt(llm):
    "prompt + generate(prompt) is the decoding of all the ids: no space lost between the two."
    prompt = "Errors should never pass"
    prompt_ids = llm.tokenizer.tokenize(prompt).numpy().tolist()
    new_ids = llm.generate_ids(prompt_ids, 8)
    assert len(new_ids) == 8
    assert prompt + llm.generate(prompt, 8) == llm.tokenizer.detokenize(prompt_ids + new_ids)
    assert llm.generate(prompt, 0) == ""


def test_pickle_is_never_used_for_safetensors(hf_dir, monkeypatch):
    "Loading Hugging Face weights reads safetensors only: unpickling anything is an error here."
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    llama_tf.load(hf_dir)


# -- issue 11: each of these was reproduced before its fix ------------------------------------------------

def _config_json(hf_dir) -> dict:
    return json.loads((hf_dir / "config.json").read_text())


@pytest.mark.parametrize("content, message", [
    ("[1, 2, 3]", "expected a JSON object, found a list"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_config_json_that_is_not_an_object(hf_dir, content, message):
    (hf_dir / "config.json").write_text(content)
    with pytest.raises(llama_tf.CheckpointError, match=message):
        llama_tf.load(hf_dir)


@pytest.mark.parametrize("field, value, message", [
    ("tie_word_embeddings", "false", "tie_word_embeddings must be true or false"),
    ("hidden_size", "64", "hidden_size must be an integer, got '64'"),
    ("rms_norm_eps", "1e-5", "norm_eps must be a finite number"),
])
def test_config_values_of_the_wrong_type(hf_dir, field, value, message):
    config = _config_json(hf_dir)
    config[field] = value
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(llama_tf.CheckpointError, match=message):
        llama_tf.load(hf_dir)


def test_a_fifo_is_not_a_config(hf_dir):
    (hf_dir / "config.json").unlink()
    os.mkfifo(hf_dir / "config.json")
    with pytest.raises(llama_tf.CheckpointError, match="not a regular file"):
        llama_tf.load(hf_dir)


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd"])
def test_an_index_may_only_name_files_beside_it(hf_dir, target):
    index = {"weight_map": {"model.embed_tokens.weight": target}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(llama_tf.CheckpointError, match="an index may only name files beside it"):
        llama_tf.load(hf_dir)


def test_an_index_that_is_a_list(hf_dir):
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(llama_tf.CheckpointError, match="no weight_map of tensor names to file names"):
        llama_tf.load(hf_dir)


def test_a_tensor_stored_twice(hf_dir):
    shutil.copy(hf_dir / "model.safetensors", hf_dir / "model-copy.safetensors")
    with pytest.raises(llama_tf.CheckpointError, match="is stored twice"):
        llama_tf.load(hf_dir)


def test_non_finite_weights_are_reported_at_load(hf_dir):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(hf_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, hf_dir / "model.safetensors")
    with pytest.raises(llama_tf.CheckpointError, match="'layers.1.feed_forward.w3.weight' .* NaN or infinite"):
        llama_tf.load(hf_dir)


@pytest.mark.parametrize("ids", [[1, -1, 5], [1, 384], [1, 10**9]])
def test_token_ids_outside_the_vocabulary(ids, hf_dir):
    llm = llama_tf.load(hf_dir)
    with pytest.raises(ValueError, match=f"the prompt holds token id {[i for i in ids if not 0 <= i < 384][0]}, outside the vocabulary .0..383."):
        llm.generate_ids(ids, 3)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_evaluate_needs_a_positive_batch_size(hf_dir, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        llama_tf.evaluate(llama_tf.load(hf_dir), "Beautiful is better than ugly.", batch_size=batch_size)


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", 1_000_000, "the configuration says 1000000 layers, the files hold 2"),
    ("num_hidden_layers", 1, "the configuration says 1 layers, the files hold 2"),
    ("intermediate_size", 10**12, r"has shape \(172, 64\), but the config .* expects \(1000000000000, 64\)"),
    ("vocab_size", 10**9, r"expects \(1000000000, 64\)"),
])
def test_the_config_is_checked_against_the_files_before_anything_is_built(hf_dir, field, value, message):
    "Before, a million layers hung, and a 10¹² feed-forward width failed inside random initialisation."
    import time

    config = _config_json(hf_dir)
    config[field] = value
    (hf_dir / "config.json").write_text(json.dumps(config))
    begin = time.perf_counter()
    with pytest.raises(llama_tf.CheckpointError, match=message):
        llama_tf.load(hf_dir)
    assert time.perf_counter() - begin < 30


@pytest.mark.parametrize("args", [
    ["fit", "--data", "/nonexistent", "--out", "OUT"],
    ["prepare", "--text", "/nonexistent", "--out", "OUT"],
    ["prepare", "--text", "README.md", "--out", "OUT", "--vocab-size", "-5"],
    ["fit", "--data", "DATA", "--out", "OUT", "--lr", "nan"],
    ["fit", "--data", "DATA", "--out", "OUT", "--dropout", "1.5"],
])
def test_train_command_line_errors_are_one_line(tmp_path, args):
    "Before, every `train` error was a traceback."
    import subprocess
    import sys

    from conftest import ROOT

    args = [a.replace("OUT", str(tmp_path / "out")).replace("DATA", str(tmp_path)) for a in args]
    result = subprocess.run([sys.executable, "-m", "llama_tf.train", *args], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "error:" in result.stderr.strip().splitlines()[-1], result.stderr


def test_an_empty_text_is_named_before_sentencepiece_tries():
    "`train prepare` on an empty file once said \"sentencepiece cannot train this tokenizer: \" and no reason."
    from llama_tf.train import train_tokenizer

    with pytest.raises(ValueError, match="the text to train the tokenizer on is empty"):
        train_tokenizer("\n \n", 100)


def test_a_huge_token_budget_allocates_only_what_is_generated(hf_dir):
    "Before, the key/value cache was allocated for max_new_tokens at once: 10⁹ tokens ran out of memory."
    from llama_tf.sampling import Sampler

    llm = llama_tf.load(hf_dir, max_seq_len=10**9)
    steps = llm.decoder([[1, 5, 7]], 10**9, Sampler(), stop_ids=())
    generated = [int(ids[0]) for _, ids in zip(range(300), steps)]    # past the first growth of the cache
    assert generated == llm.generate_ids([1, 5, 7], 300, stop_ids=())


def test_evaluate_bounds_the_logits_it_holds(hf_dir, monkeypatch):
    "Rows per forward pass shrink so that their logits fit LOGITS_BYTES; the score does not change."
    import dataclasses

    from llama_tf import evaluation

    llm = llama_tf.load(hf_dir)
    text = "Beautiful is better than ugly. Explicit is better than implicit. " * 20
    whole = llama_tf.evaluate(llm, text, context=32)
    batches = []

    class Spy:
        output_shape = llm.model.output_shape

        def __call__(self, inputs, training=False):
            batches.append(len(inputs))
            return llm.model(inputs, training=training)

    monkeypatch.setattr(evaluation, "LOGITS_BYTES", 2 * 4 * 384 * 32)     # two 32-token rows
    bounded = llama_tf.evaluate(dataclasses.replace(llm, model=Spy()), text, context=32)
    assert max(batches) == 2 and len(batches) > 3
    # Other batch shapes round the float32 logits differently (a few 1e-6 at this scale), never more.
    assert bounded.nll == pytest.approx(whole.nll, rel=1e-6)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "int8"])
def test_tensor_types_llama_tf_cannot_read_are_named(hf_dir, dtype):
    torch = require("torch")
    from safetensors.torch import load_file, save_file

    tensors = load_file(hf_dir / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].to(getattr(torch, dtype))
    save_file(tensors, hf_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.up_proj.weight is stored as (F8_E4M3|F8_E5M2|I8); "
                                              r"llama_tf reads F32, F16, BF16, F64"):
        llama_tf.load(hf_dir)


def test_meta_shards_whose_split_sizes_disagree(model, tmp_path, tiny_tokenizer_proto):
    torch = require("torch")
    directory = write_meta(model, tmp_path / "meta", tiny_tokenizer_proto, n_shards=2)
    state = torch.load(directory / "consolidated.01.pth", weights_only=True)
    state["layers.0.attention.wo.weight"] = state["layers.0.attention.wo.weight"][:-1]   # a row short
    torch.save(state, directory / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth: layers.0.attention.wo.weight has shape .* "
                                              r"does not fit consolidated.00.pth's"):
        llama_tf.load(directory)


@pytest.mark.parametrize("argument, message", [
    ({"dtype": "int8"}, "dtype must be one of float32, float16, bfloat16, q8_0, gguf, not 'int8'"),
    ({"attention_impl": "flash"}, "attention_impl must be one of reference, tiled, fused, not 'flash'"),
])
def test_load_names_a_setting_it_does_not_know(argument, message):
    "Checked before any file is read (Keras' own error for an unknown dtype policy names no llama_tf setting)."
    with pytest.raises(ValueError, match=re.escape(message)):
        llama_tf.load("no/such/checkpoint", **argument)


def test_ids_past_the_tokenizer_are_never_generated(tmp_path, tiny_tokenizer_proto):
    "An embedding padded past the vocabulary: the padded rows, made the most likely, are still never picked."
    torch = require("torch")
    vocab = llama_tf.Tokenizer(tiny_tokenizer_proto).vocab_size
    model = hf_model(vocab_size=vocab + 64, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight[vocab:] = 100 * model.lm_head.weight[:vocab].abs().max()
    llm = llama_tf.load(write_hf(model, tmp_path / "hf", tiny_tokenizer_proto))
    assert llm.config.vocab_size == vocab + 64
    assert max(llm.generate_ids([1, 5, 6], 12, stop_ids=())) >= vocab   # ids in, the model's own ids out
    # Text: greedy would pick a padded id at every step, which the tokenizer cannot write out.
    assert isinstance(llm.generate("ab", 12), str) and isinstance(llm.generate("ab", 12, temperature=1.0, seed=0), str)
    assert isinstance(llm.chat([{"role": "user", "content": "ab"}], 8, temperature=0), str)


@contextlib.contextmanager
def within(seconds: int):
    "Fails the test instead of hanging it (a read from a pipe nobody writes blocks forever)."
    def timeout(*_):
        raise TimeoutError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("layout", ["gguf", "hf", "meta", "tokenizer"])
def test_a_named_pipe_is_refused_not_read(layout, hf_dir, meta_dir, tmp_path):
    "A FIFO where a weights or tokenizer file should be: named as such at once, never opened."
    if layout == "gguf":
        target = tmp_path / "model.gguf"
    elif layout == "hf":
        target = hf_dir / "model.safetensors"
    elif layout == "meta":
        target = meta_dir / "consolidated.00.pth"
    else:
        target = tmp_path / "tokenizer.model"
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    error = llama_tf.TokenizerError if layout == "tokenizer" else CheckpointError
    with within(20), pytest.raises(error, match="not a regular file"):
        if layout == "tokenizer":
            llama_tf.Tokenizer(target)
        else:
            llama_tf.load(target if layout == "gguf" else target.parent)


def test_a_prompt_that_is_not_utf8_reads_as_replacement_characters(tiny_tokenizer_proto):
    """A command-line argument that is not UTF-8 reaches Python as lone surrogates: read as U+FFFD (as
    tiktoken and the tokenizers library read them), not TensorFlow's "Error converting unicode string"."""
    llm = llama_tf.load()
    assert llm.generate("ROMEO:\udcff", 4) == llm.generate("ROMEO:\ufffd", 4)
    for tok in (llm.tokenizer, llama_tf.Tokenizer(tiny_tokenizer_proto)):
        assert tok.encode("a\udcffb") == tok.encode("a\ufffdb")
        assert tok.tokenize(["a\udcffb"]).to_list() == tok.tokenize(["a\ufffdb"]).to_list()
