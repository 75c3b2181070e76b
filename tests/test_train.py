"""`python -m llama_tf.train` end to end, tiny: prepare (tokenizer + tf.data tokenization), fit, plot; the
result loads with llama_tf.load and its files are those the model card describes."""

import json
from pathlib import Path

import numpy as np
import pytest

import llama_tf
from llama_tf.train import main, split_text
from conftest import shared_path


@pytest.mark.training
def test_prepare_fit_plot(tmp_path):
    text = shared_path("data/tinyshakespeare.txt").read_text()[:200_000]
    (tmp_path / "text.txt").write_text(text)
    data, out = tmp_path / "data", tmp_path / "model"
    main(["prepare", "--text", str(tmp_path / "text.txt"), "--out", str(data), "--vocab-size", "400",
          "--sampled-epochs", "2"])
    stats = json.loads((data / "prepare.json").read_text())
    splits = split_text(text, 0.1, 0.05)
    assert {k: stats[k]["characters"] for k in ("train", "valid", "heldout")} == {k: len(v) for k, v in splits.items()}
    assert len(np.load(data / "train.npy")) == stats["train"]["sampled_tokens"] > stats["train"]["tokens"]

    main(["fit", "--data", str(data), "--out", str(out), "--dim", "32", "--n-layers", "1", "--n-heads", "2",
          "--hidden-dim", "64", "--seq-len", "32", "--batch-size", "4", "--steps", "6", "--eval-every", "3",
          "--warmup-steps", "2", "--verbose", "0"])
    main(["plot", str(out)])
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [3, 6]
    log = (out / "training.log").read_text()
    assert "held-out:" in log and "nats/char" in log
    assert (out / "loss.png").stat().st_size > 0

    llm = llama_tf.load(out)
    assert llm.config.max_seq_len == 32 and llm.tokenizer.vocab_size == 400
    assert isinstance(llm.generate("ROMEO:", 5), str)


def test_text_is_a_file_or_an_asset_name(tmp_path, monkeypatch):
    "`prepare --text tinyshakespeare` reads the asset (the model card's command), a path reads the path."
    from llama_tf.train import text_file

    monkeypatch.chdir(tmp_path)
    assert text_file("tinyshakespeare") == shared_path("data/tinyshakespeare.txt")
    (tmp_path / "tinyshakespeare").write_text("a file of that name wins")
    assert text_file("tinyshakespeare") == Path("tinyshakespeare")
    assert text_file("notes.txt") == Path("notes.txt")
