"""`LLM.export(format="litert")`: a LiteRT file whose `prefill` and `decode` signatures compute the Keras
model's logits, run by `ai_edge_litert`'s interpreter; its greedy loop gives `llm.generate`'s text."""

import numpy as np
import pytest

import llama_tf
from conftest import require

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(__import__("keras").backend.backend() != "tensorflow",
                                reason="a LiteRT file is written from the TensorFlow backend")

PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo! wherefore art thou", "To be"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    require("ai_edge_litert")
    llm, folder = llama_tf.load(), tmp_path_factory.mktemp("litert")
    return llm, llm.export(folder / "shakespeare.tflite", format="litert"), \
        llm.export(folder / "shakespeare_int8.tflite", format="litert", quantize="int8")


def runners(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner("decode")


def test_prefill_and_decode_compute_the_models_logits(files):
    "float32: each signature's logits within 1e-4 of their scale of the Keras model's, at every step of a prompt."
    llm, path, _ = files
    prefill, decode = runners(path)
    ids = llm.tokenizer.prompt_ids(PROMPTS[1])
    expected = np.asarray(llm.model(np.array([ids])))[0]                 # (seq, vocab)
    scale = np.abs(expected).max()
    out = prefill(tokens=np.array([ids[:4]], "int32"))
    assert out["keys_0"].shape == (1, llm.config.n_kv_heads, llm.config.max_seq_len, llm.config.head_dim)
    np.testing.assert_allclose(out["logits"][0], expected[3], atol=1e-4 * scale, rtol=0)
    for position in range(4, len(ids)):                                # one token at a time through the cache
        cache = {name: value for name, value in out.items() if name != "logits"}
        out = decode(token=np.array([[ids[position]]], "int32"), position=np.array(position, "int32"), **cache)
        np.testing.assert_allclose(out["logits"][0], expected[position], atol=1e-4 * scale, rtol=0)


def test_its_greedy_loop_gives_generates_text(files):
    from llama_tf.litert import generate_litert

    llm, path, _ = files
    for prompt in PROMPTS:
        assert generate_litert(path, llm.tokenizer, prompt, 30) == llm.generate(prompt, 30)


def test_int8_weights_quarter_the_file_and_keep_the_top_tokens(files):
    """Dynamic-range int8: under a third of float32's bytes; the prompt's logits within 2 % of their
    scale, and the most likely next token unchanged at 9 positions in 10 or more."""
    llm, path, int8 = files
    assert int8.stat().st_size < path.stat().st_size / 3   # the embedding table stays float32 (a gather)
    ids = llm.tokenizer.prompt_ids(PROMPTS[1])
    expected = np.asarray(llm.model(np.array([ids])))[0]
    prefill, _ = runners(int8)
    logits = np.stack([prefill(tokens=np.array([ids[:n]], "int32"))["logits"][0] for n in range(1, len(ids) + 1)])

    assert np.abs(logits - expected).max() < 0.02 * np.abs(expected).max()   # 0.8 % measured
    assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.9          # all measured


def test_litert_refuses_what_it_cannot_convert(files, tmp_path):
    llm, _, _ = files
    with pytest.raises(ValueError, match="quantize must be None or 'int8', got 'int4'"):
        llm.export(tmp_path / "x.tflite", format="litert", quantize="int4")
    with pytest.raises(ValueError, match="quantize is for format='litert'"):
        llm.export(tmp_path / "x", quantize="int8")
    with pytest.raises(ValueError, match="from float32 weights"):
        llama_tf.load(dtype="bfloat16").export(tmp_path / "x.tflite", format="litert")
    assert not list(tmp_path.iterdir())                                 # nothing written


def test_the_command_line_writes_a_litert_file_and_refuses_int8_for_a_savedmodel(files, tmp_path, capsys):
    from llama_tf.__main__ import main

    llm, path, _ = files
    assert main(["export", str(llama_tf.DEFAULT_WEIGHTS), str(tmp_path / "m.tflite"), "--format", "litert"]) == 0
    assert (tmp_path / "m.tflite").read_bytes() == path.read_bytes()      # the same conversion
    assert main(["export", str(llama_tf.DEFAULT_WEIGHTS), str(tmp_path / "out"), "--quantize", "int8"]) == 1
    assert "error: quantize is for format='litert'" in capsys.readouterr().err and not (tmp_path / "out").exists()
