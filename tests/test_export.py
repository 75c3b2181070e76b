"""`LLM.export`: a SavedModel that answers strings with text, loaded in a fresh process that has only
TensorFlow and tensorflow_text, gives `llm.generate`'s greedy text."""

import json
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


def test_export_names_what_it_cannot_write(exported, tmp_path):
    llm, _ = exported
    with pytest.raises(ValueError, match="format must be 'saved_model'"):
        llm.export(tmp_path / "x", format="onnx")
