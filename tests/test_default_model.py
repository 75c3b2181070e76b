"""The shipped default model (weights/shakespeare): present and within budget, its held-out figure reproduced by
the project's eval command, the same likelihood under Hugging Face transformers, and the command line."""

import re

import numpy as np
import pytest

import llama_tf
from llama_tf.__main__ import main
from llama_tf.evaluation import _windows, score_ids
from llama_tf.train import split_text, token_stream
from conftest import require, shared_path
from test_tokenizer import AWKWARD, _random_ids

SLICE = 20_000                  # characters at the start of the held-out split
SLICE_NATS_PER_CHAR = 1.548752  # computed with `python -m llama_tf eval` (TensorFlow, CPU) when the model shipped


@pytest.fixture(scope="module")
def llm():
    return llama_tf.load()


@pytest.fixture(scope="module")
def heldout():
    text = shared_path("data/tinyshakespeare.txt").read_text()
    return split_text(text, held_out=0.1, valid=0.05)["heldout"]


def test_default_model_ships_within_budget(llm):
    files = llama_tf.DEFAULT_WEIGHTS
    assert (files / "model.safetensors").stat().st_size <= 25_000_000
    assert llm.config.num_parameters == llm.model.count_params() == 12_194_688
    assert llm.tokenizer.vocab_size == llm.config.vocab_size == 4096
    for name in ("README.md",):
        assert (files.parent / name).is_file()
    for name in ("training.log", "history.json", "loss.png", "config.json", "tokenizer.model"):
        assert (files / name).is_file()


def test_heldout_slice_figure_from_the_eval_command(heldout, tmp_path, capsys):
    file = tmp_path / "heldout-slice.txt"
    file.write_text(heldout[:SLICE])
    assert main(["eval", str(file)]) == 0
    out = capsys.readouterr().out
    nats_per_char = float(re.search(r"([\d.]+) nats/char", out)[1])
    assert "20,000 characters" in out
    assert nats_per_char == pytest.approx(SLICE_NATS_PER_CHAR, abs=5e-4)
    assert nats_per_char <= 1.55


def test_eval_likelihood_matches_transformers(llm, heldout):
    "The same files read by transformers' LlamaForCausalLM score the same text within 1e-5 relative."
    torch = require("torch")
    transformers = require("transformers")
    reference = transformers.LlamaForCausalLM.from_pretrained(llama_tf.DEFAULT_WEIGHTS, dtype=torch.float32).eval()

    def reference_logits(ids, training=False):
        with torch.no_grad():
            return reference(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()

    ids = llm.tokenizer.tokenize(heldout[:3000]).numpy()[1:]
    ours = score_ids(llm.model, ids, llm.tokenizer.bos_id, context=256)
    theirs = score_ids(reference_logits, ids, llm.tokenizer.bos_id, context=256)
    assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize("n, context, stride", [(1, 8, 4), (7, 8, 4), (8, 8, 4), (100, 16, 5), (100, 16, 15)])
def test_windows_score_every_token_once(n, context, stride):
    scored = []
    for start, end, first in _windows(n, context, stride):
        assert end - start <= context - 1 and start <= first < end
        scored.extend(range(first, end))
    assert scored == list(range(n))


def test_score_ids_equals_a_direct_computation(llm):
    "A text shorter than the context: the NLL is the plain sum of -log p(token | BOS + prefix)."
    ids = llm.tokenizer.tokenize("ROMEO:\nBut soft, what light through yonder window breaks?").numpy()
    logits = np.asarray(llm.model(ids[None]), np.float64)[0, :-1]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    direct = -log_probs[np.arange(len(ids) - 1), ids[1:]].sum()
    assert score_ids(llm.model, ids[1:], llm.tokenizer.bos_id, context=256) == pytest.approx(direct, rel=1e-6)


def test_shipped_tokenizer_matches_sentencepiece(llm, heldout):
    spm = require("sentencepiece")
    reference = spm.SentencePieceProcessor(model_proto=llm.tokenizer.model_proto)
    texts = heldout.splitlines() + AWKWARD
    assert llm.tokenizer.tokenize(texts).to_list() == reference.encode(texts, add_bos=True)
    assert llm.tokenizer.detokenize(llm.tokenizer.tokenize(texts)) == texts
    ids = _random_ids(llm.tokenizer.vocab_size)
    assert llm.tokenizer.detokenize(ids) == reference.decode(ids)


def test_training_tokenizes_line_by_line_as_eval_does_whole(llm, heldout):
    "train.token_stream (a tf.data pipeline over lines) gives exactly the ids of the whole text."
    plain = llama_tf.Tokenizer(llm.tokenizer.model_proto, add_bos=False)
    part = heldout[:20_000]
    np.testing.assert_array_equal(token_stream(plain, part), plain.tokenize(part).numpy())


def test_generate_from_the_command_line(llm, capsys):
    "The command streams prompt + continuation, the same text as `generate`, sampling options included."
    assert main(["generate", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "ROMEO:" + llm.generate("ROMEO:", 12) + "\n"
    argv = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "2", "--stop", "\n\n"]
    assert main(["generate", "ROMEO:", "--max-new-tokens", "40", *argv]) == 0
    expected = llm.generate("ROMEO:", 40, 0.8, 2, top_k=40, top_p=0.9, stop="\n\n")
    assert capsys.readouterr().out == "ROMEO:" + expected + "\n"


def test_sampling_is_reproducible(llm):
    first = llm.generate("JULIET:", 20, temperature=0.8, seed=3)
    assert llm.generate("JULIET:", 20, temperature=0.8, seed=3) == first
    assert llm.generate("JULIET:", 20, temperature=0.8, seed=4) != first
    assert llm.generate("JULIET:", 20) == llm.generate("JULIET:", 20, temperature=0)


@pytest.mark.parametrize("argv, message", [
    (["generate", "ROMEO:", "--weights", "/nonexistent/model"], "error: checkpoint not found: /nonexistent/model"),
    (["generate", "ROMEO:", "--stop", ""], "error: stop must be a non-empty string"),
    (["generate", "ROMEO:" * 200], "error: the prompt is 401 tokens, longer than the model's context of 256"),
    (["eval", "/nonexistent/text.txt"], "error: [Errno 2] No such file or directory"),
])
def test_command_line_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert captured.out == ""


def test_the_command_line_prints_only_its_own_output(llm):
    """Run as a user would: no TensorFlow log lines on stderr, the default sampled continuation (temperature 0.6,
    top-p 0.9, seed 0) on stdout, and an error as one line."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "LLAMA_TF_NATIVE_LOGS")}
    command = [sys.executable, "-m", "llama_tf", "generate", "ROMEO:", "--max-new-tokens", "30"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert (run.returncode, run.stderr) == (0, "")
    expected = llm.generate("ROMEO:", 30, temperature=0.6, seed=0, top_p=0.9)
    assert run.stdout == "ROMEO:" + expected + "\n"
    assert expected != llm.generate("ROMEO:", 30)                              # sampled, not greedy
    run = subprocess.run([*command, "--weights", "/nonexistent"], capture_output=True, text=True, env=env, timeout=300)
    assert (run.returncode, run.stdout, run.stderr) == (1, "", "error: checkpoint not found: /nonexistent\n")


def test_the_readme_shows_what_its_first_command_prints(capsys):
    "README's quick start shows the start of `python -m llama_tf generate \"ROMEO:\"`: sampled with seed 0, reproducible."
    from conftest import ROOT

    shown = re.search(r"the same text every time:\n\n```\n(.*?)\.\.\.\n```", (ROOT / "README.md").read_text(), re.S)[1]
    assert main(["generate", "ROMEO:"]) == 0
    assert capsys.readouterr().out.startswith(shown)
