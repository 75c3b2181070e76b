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
    shown = capsys.readouterr()
    assert shown.out.strip() == str(tmp_path / "m.tflite") and "exporting: 100%" in shown.err and "3/3" in shown.err
    assert main(["export", str(llama_tf.DEFAULT_WEIGHTS), str(tmp_path / "out"), "--quantize", "int8"]) == 1
    assert "error: quantize is for format='litert'" in capsys.readouterr().err and not (tmp_path / "out").exists()


# -- a LiteRT-LM bundle, run by Google's runtime ---------------------------------------------------------------

LONG = ("JULIET: O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name; Or, if thou "
        "wilt not, be but sworn my love, And I'll no longer be a Capulet.")


def test_a_litert_lm_bundle_runs_in_googles_runtime_and_gives_generates_text(tmp_path):
    """LiteRT-LM's engine (what `litert-lm run` runs) loads the bundle, tokenizes with the SentencePiece model
    inside it, prefills 32 tokens a call (the long prompt takes two calls; the rest are padded as the runtime
    pads them) and decodes greedily (top-k 1) until the context is full: `generate`'s text to the end."""
    litert_lm = require("litert_lm")
    llm = llama_tf.load()
    assert len(llm.tokenizer.prompt_ids(LONG)) > 32
    path = llm.export(tmp_path / "shakespeare.litertlm", format="litert_lm")
    engine = litert_lm.Engine(str(path))
    for prompt in ("ROMEO:", LONG):
        with engine.create_session(sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
            session.run_prefill([prompt])
            text = session.run_decode().texts[0]
        assert text == llm.generate(prompt, llm.config.max_seq_len - len(llm.tokenizer.prompt_ids(prompt)))


def test_a_litert_lm_bundle_names_what_it_cannot_hold(tmp_path, llama3_tokenizer_path):
    from llama_tf.litert import litert_lm

    llm = llama_tf.load()
    with pytest.raises(ValueError, match="prefill_len must be 1..256"):
        litert_lm(llm, tmp_path / "m.litertlm", prefill_len=0)
    llm.tokenizer = llama_tf.Tokenizer(llama3_tokenizer_path)
    with pytest.raises(ValueError, match="SentencePiece model or a tokenizer.json, not a TiktokenTokenizer"):
        llm.export(tmp_path / "m.litertlm", format="litert_lm")
    assert not list(tmp_path.iterdir())


def test_a_llama3_bundle_holds_its_tokenizer_json(tmp_path, llama3_tokenizer_json):
    "A random Llama-3-shaped model: the runtime tokenizes with the bundle's tokenizer.json, as `generate` does."
    import shutil

    from reference import hf_model, write_hf

    litert_lm = require("litert_lm")
    directory = write_hf(hf_model(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=128,
                                  vocab_size=128_256, max_position_embeddings=64, rope_theta=500_000.0), tmp_path / "hf", b"")
    (directory / "tokenizer.model").unlink()
    shutil.copy(llama3_tokenizer_json, directory / "tokenizer.json")
    llm = llama_tf.load(directory)
    engine = litert_lm.Engine(str(llm.export(tmp_path / "llama3.litertlm", format="litert_lm")))
    prompt = "Hello  world! It's 2024: 1234567 日本語 🦙"
    with engine.create_session(sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
        session.run_prefill([prompt])
        text = session.run_decode().texts[0]
    assert text == llm.generate(prompt, llm.config.max_seq_len - len(llm.tokenizer.prompt_ids(prompt)))
