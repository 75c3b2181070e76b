"""On a machine without TensorFlow (a JAX or PyTorch GPU box) llama_tf loads, tokenizes, generates and
evaluates on the other backends: simulated by a subprocess in which `import tensorflow` fails. Its
results must equal TensorFlow's, and the SentencePiece kind it falls back to must give notebook 01's ids."""

import json
import os
import subprocess
import sys

import pytest

import llama_tf
from llama_tf.tokenizers.sentencepiece_library import SentencePieceLibraryTokenizer
from conftest import ROOT, require, shared_path

SCRIPT = """
import json, sys
sys.modules["tensorflow"] = sys.modules["tensorflow_text"] = None    # import tensorflow fails
import llama_tf
llm = llama_tf.load()
print(json.dumps({"kind": type(llm.tokenizer).__name__, "ids": llm.tokenizer.prompt_ids("ROMEO: O, she doth"),
                  "text": llm.generate("ROMEO:", 24), "chat": llm.generate(["JULIET:", "ROMEO:"], 8),
                  "nll": llama_tf.evaluate(llm, "To be, or not to be, that is the question.").nll,
                  "tensorflow": "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None}))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_load_generate_and_evaluate_without_tensorflow(backend):
    require(backend)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    llm = llama_tf.load()
    assert result["kind"] == "SentencePieceLibraryTokenizer" and not result["tensorflow"]
    assert result["ids"] == llm.tokenizer.tokenize("ROMEO: O, she doth").numpy().tolist()
    assert result["text"] == llm.generate("ROMEO:", 24)
    assert result["chat"] == llm.generate(["JULIET:", "ROMEO:"], 8)
    assert result["nll"] == pytest.approx(llama_tf.evaluate(llm, "To be, or not to be, that is the question.").nll,
                                          rel=1e-5)


def test_the_library_kind_gives_notebook_01s_ids_and_text():
    path = shared_path("tokenizers/llama/tokenizer.model")
    ours, reference = SentencePieceLibraryTokenizer(path), llama_tf.SentencePieceTokenizer(path)
    lines = shared_path("data/tinyshakespeare.txt").read_text().splitlines()[:2000] + [
        " y", "  two spaces", "\\n\\n", "tab\\there", "emoji 🐝 and ü", "", "<s> looks special </s>"]
    for line in lines:
        ids = reference.tokenize(line).numpy().tolist()
        assert ours.prompt_ids(line) == ids, line
        assert ours.detokenize(ids) == reference.detokenize(ids) == line, line
    assert ours.id_to_string([1, 450, 1900]) == reference.id_to_string([1, 450, 1900])
    assert (ours.vocab_size, ours.bos_id, ours.eos_id) == (reference.vocab_size, reference.bos_id, reference.eos_id)
