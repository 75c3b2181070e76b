"""`LLM.export`: a SavedModel that answers strings with text, loaded in a fresh process that has only
TensorFlow and tensorflow_text, gives `llm.generate`'s greedy text."""

import json
import shutil
import subprocess
import sys

import pytest

import llama_tf

require_tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(__import__("keras").backend.backend() != "tensorflow",
                                reason="a SavedModel is written from the TensorFlow backend")

PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo! wherefore art thou", "To be"]

SERVE = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
texts = {n: serve(prompt=tf.constant(json.loads(sys.argv[2])), max_new_tokens=tf.constant(n))["text"].numpy()
         for n in json.loads(sys.argv[3])}
print(json.dumps({"text": {n: [t.decode() for t in out] for n, out in texts.items()},
                  "llama_tf": "llama_tf" in sys.modules}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    llm = llama_tf.load()
    return llm, llm.export(tmp_path_factory.mktemp("export") / "shakespeare" / "1")


def serve(path, prompts, budgets):
    done = subprocess.run([sys.executable, "-c", SERVE, str(path), json.dumps(prompts), json.dumps(budgets)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_fresh_tensorflow_process_gives_generates_text(exported):
    "Prompts of different lengths (left padding), one new token and several; no llama_tf in that process."
    llm, path = exported
    answer = serve(path, PROMPTS, [1, 24])
    assert answer == {"text": {str(n): llm.generate(PROMPTS, n) for n in (1, 24)}, "llama_tf": False}
    assert len(set(answer["text"]["24"])) == len(PROMPTS)          # each row its own continuation
    assert (path / "saved_model.pb").is_file() and path.name == "1"   # TensorFlow Serving's NAME/1 layout


SAMPLE = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
sample = tf.saved_model.load(sys.argv[1]).signatures["sample"]
prompts = tf.constant(json.loads(sys.argv[2]))
texts = [[t.decode() for t in sample(prompt=prompts, max_new_tokens=tf.constant(24), temperature=tf.constant(t),
                                     top_p=tf.constant(p), seed=tf.constant(s, tf.int64))["text"].numpy()]
         for t, p, s in json.loads(sys.argv[3])]
print(json.dumps(texts))
"""


def test_the_sample_signature_draws_reproducibly_and_is_greedy_at_temperature_0(exported):
    llm, path = exported
    settings = [(0.0, 0.95, 1), (1.0, 0.0, 1), (0.8, 0.95, 1), (0.8, 0.95, 1), (0.8, 0.95, 2)]
    done = subprocess.run([sys.executable, "-c", SAMPLE, str(path), json.dumps(PROMPTS), json.dumps(settings)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cold, nucleus_of_one, first, again, other = json.loads(done.stdout.splitlines()[-1])
    greedy = llm.generate(PROMPTS, 24)
    assert cold == greedy and nucleus_of_one == greedy           # temperature 0, or a nucleus of one token
    assert first == again and first != other and first != greedy  # a seed gives its text; another seed another


def test_draws_in_the_graph_follow_the_samplers_distribution():
    """`pick_in_graph` against `sampling.ranked_probabilities` (temperature, then the nucleus): 40,000 draws
    of one row, each token's frequency within 0.01 of its probability (4.5 standard deviations at most)."""
    import numpy as np
    import tensorflow as tf

    from llama_tf.export import pick_in_graph
    from llama_tf.sampling import ranked_probabilities

    logits = np.array([[2.0, 0.5, 1.5, -1.0, 0.0, 1.0, -3.0, 0.2]], "float32")
    order, probs = ranked_probabilities(logits, temperature=0.7, top_p=0.8)
    expected = np.zeros(8)
    expected[order[0]] = probs[0] / probs[0].sum()
    n = 40_000
    drawn = pick_in_graph(tf.constant(np.repeat(logits, n, axis=0)), tf.constant(0.7), tf.constant(0.8),
                          tf.constant(7, tf.int64), 0).numpy()
    frequency = np.bincount(drawn, minlength=8) / n
    assert frequency[expected == 0].sum() == 0                    # nothing outside the nucleus
    np.testing.assert_allclose(frequency, expected, atol=0.01)


def test_export_names_what_it_cannot_write(exported, tmp_path, capsys):
    from llama_tf.__main__ import main

    llm, _ = exported
    with pytest.raises(ValueError, match="format must be 'saved_model'"):
        llm.export(tmp_path / "x", format="onnx")
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "out").exists()


def stops_one_row(model, load, prompts, steps, stop_id):
    """`model` (transformers) with its output rows for `stop_id` and for one token t swapped, t being a token
    of the first prompt's greedy path only and not its first: the same path until the step that picked t,
    which now picks `stop_id` and ends that row. Returns the model loaded by `load` (model -> LLM)."""
    torch = pytest.importorskip("torch")
    plain = load(model, "plain")
    paths = plain.generate_ids([plain.tokenizer.prompt_ids(p) for p in prompts], steps, stop_ids=())
    t = next(t for t in paths[0][2:] if t not in paths[1] and t != stop_id)
    with torch.no_grad():
        rows = model.lm_head.weight
        rows[[t, stop_id]] = rows[[stop_id, t]].clone()
    llm = load(model, "swapped")
    first = llm.generate_ids([llm.tokenizer.prompt_ids(p) for p in prompts], steps)
    assert first[0][-1] == stop_id and len(first[0]) < steps and len(first[1]) == steps   # one stops, one goes on
    return llm


def test_a_row_that_reaches_its_stop_token_ends_there_and_the_others_go_on(tmp_path, tiny_tokenizer_proto):
    "SentencePiece in the graph: a batch where one row reaches EOS and the other does not."
    from reference import hf_model, write_hf

    prompts, steps = ["Beautiful is better", "Flat is"], 12
    load = lambda model, name: llama_tf.load(write_hf(model, tmp_path / name, tiny_tokenizer_proto))  # noqa: E731
    eos = llama_tf.Tokenizer(tiny_tokenizer_proto).eos_id
    llm = stops_one_row(hf_model(tie_word_embeddings=False), load, prompts, steps, eos)
    answer = serve(llm.export(tmp_path / "served" / "1"), prompts, [steps])
    assert answer["text"][str(steps)] == llm.generate(prompts, steps)


LLAMA3_SHAPE = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=128,
                    vocab_size=128_256, max_position_embeddings=96, rope_theta=500_000.0, tie_word_embeddings=False)
LLAMA3_PROMPTS = ["Hello  world! It's 2024: 1234567", "日本語 🦙\t\n\n  x", "don't"]


def test_llama3s_byte_level_bpe_runs_in_the_graph(tmp_path, llama3_tokenizer_json):
    """A random Llama-3-shaped model with its tokenizer.json: tokenizing (regex split, bytes, merges by rank)
    and detokenizing run as TensorFlow ops, and a fresh TensorFlow process answers as `generate` does, on
    prompts of different lengths, one row ending at `<|eot_id|>` and the others going on."""
    from reference import hf_model, write_hf

    def load(model, name):
        directory = write_hf(model, tmp_path / name, b"")
        (directory / "tokenizer.model").unlink()
        shutil.copy(llama3_tokenizer_json, directory / "tokenizer.json")
        return llama_tf.load(directory)

    steps = 10
    llm = stops_one_row(hf_model(**LLAMA3_SHAPE), load, LLAMA3_PROMPTS, steps, 128009)
    assert type(llm.tokenizer).__name__ == "HFTokenizer"
    answer = serve(llm.export(tmp_path / "served" / "1"), LLAMA3_PROMPTS, [1, steps])
    assert answer == {"text": {str(n): llm.generate(LLAMA3_PROMPTS, n) for n in (1, steps)}, "llama_tf": False}
