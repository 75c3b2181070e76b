"""Fine-tuning data (`llama_tf.finetune`) and `python -m llama_tf.train lora` end to end: which tokens of a
conversation the loss counts, in both chat formats; text windows; bad files named; the adapter the command
writes gives peft the logits llama_tf gives."""

import json

import numpy as np
import pytest

import llama_tf
from llama_tf.backend import inference, to_numpy
from llama_tf.finetune import assistant_weights, chat_rows, read_data, text_rows
from llama_tf.train import main
from conftest import require
from reference import hf_model, max_relative_error, write_hf

CONVERSATION = [{"role": "system", "content": "You answer in verse."},
                {"role": "user", "content": "Who rules Verona?"},
                {"role": "assistant", "content": "Prince Escalus holds the city's reins."},
                {"role": "user", "content": "And who loves Juliet?"},
                {"role": "assistant", "content": "A Montague, young Romeo by name."}]
REPLIES = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]


def weighted_runs(ids, weights):
    "The runs of consecutive ids that carry weight 1."
    runs, current = [], []
    for token, w in zip(ids, weights):
        if w:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs + [current] if current else runs


def test_llama3_chat_counts_each_reply_and_its_end_of_turn(llama3_tokenizer_path):
    tokenizer = llama_tf.Tokenizer(llama3_tokenizer_path)
    ids, weights = assistant_weights(tokenizer, CONVERSATION)
    assert ids == tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    eot = tokenizer.special_tokens["<|eot_id|>"]
    runs = weighted_runs(ids, weights)
    assert [run[-1] for run in runs] == [eot, eot]
    assert [tokenizer.decode(run[:-1]) for run in runs] == REPLIES


def test_llama2_chat_counts_each_reply_and_its_end_of_text(llama_tokenizer_path):
    tokenizer = llama_tf.Tokenizer(llama_tokenizer_path)
    ids, weights = assistant_weights(tokenizer, CONVERSATION)
    runs = weighted_runs(ids, weights)
    assert [run[-1] for run in runs] == [tokenizer.eos_id] * 2
    assert [tokenizer.decode(run[:-1]).strip() for run in runs] == REPLIES
    assert sum(weights) == sum(len(run) for run in runs) < len(ids) / 2    # the prompts are not counted


def test_chat_rows_shift_by_one_pad_with_weight_zero_and_count_what_was_cut(llama_tokenizer_path):
    tokenizer = llama_tf.Tokenizer(llama_tokenizer_path)
    ids, weights = assistant_weights(tokenizer, CONVERSATION)
    rows, cut = chat_rows(tokenizer, [CONVERSATION, CONVERSATION[:3]], len(ids) + 4)
    assert cut == 0 and rows.inputs.shape == (2, len(ids) + 4)
    np.testing.assert_array_equal(rows.inputs[0, : len(ids) - 1], ids[:-1])
    np.testing.assert_array_equal(rows.targets[0, : len(ids) - 1], ids[1:])
    np.testing.assert_array_equal(rows.weights[0, : len(ids) - 1], weights[1:])
    assert not rows.weights[0, len(ids) - 1 :].any()
    rows, cut = chat_rows(tokenizer, [CONVERSATION], len(ids) - 5)
    assert cut == 1 and rows.inputs.shape == (1, len(ids) - 5)
    assert rows.tokens == sum(weights[1 : len(ids) - 4])
    with pytest.raises(ValueError, match="nothing to learn"):
        chat_rows(tokenizer, [CONVERSATION[:2]], 64)


def test_text_rows_make_every_token_a_target_once(llama_tokenizer_path):
    tokenizer = llama_tf.Tokenizer(llama_tokenizer_path)
    text = "Now is the winter of our discontent\nMade glorious summer by this sun of York.\n" * 3
    ids = [tokenizer.bos_id, *tokenizer.encode(text)]
    rows = text_rows(tokenizer, text, 16)
    assert rows.tokens == len(ids) - 1
    assert rows.targets[rows.weights > 0].tolist() == ids[1:]
    assert rows.inputs[rows.weights > 0].tolist() == ids[:-1]
    with pytest.raises(ValueError, match="empty"):
        text_rows(tokenizer, " \n", 16)


@pytest.mark.parametrize("content, message", [
    ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [', "line 2: not JSON"),
    ('["a list"]', "line 1: expected"),
    ('{"messages": []}', "line 1: expected"),
    ('{"messages": [{"role": "narrator", "content": "hi"}]}', "line 1: each message needs a 'role'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "line 1: each message needs"),
    ("\n\n", "no conversations"),
])
def test_a_malformed_chat_file_is_named_with_its_line(tmp_path, content, message):
    (tmp_path / "data.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_data(tmp_path / "data.jsonl")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "data.txt").write_bytes(b"\xff\xfe text")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_data(tmp_path / "data.txt")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(num_key_value_heads=2)
    return model, write_hf(model, tmp_path_factory.mktemp("finetune") / "base", tiny_tokenizer_proto)


@pytest.mark.training
def test_lora_command_trains_on_chat_and_writes_what_peft_reads(base, tmp_path):
    model, directory = base
    lines = [{"messages": [{"role": "user", "content": f"Name a virtue, {i}."},
                           {"role": "assistant", "content": "Beautiful is better than ugly."}]} for i in range(12)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "adapter"
    assert main(["lora", "--weights", str(directory), "--data", str(tmp_path / "chat.jsonl"), "--out", str(out),
                 "--rank", "4", "--alpha", "8", "--seq-len", "96", "--batch-size", "4", "--steps", "6",
                 "--eval-every", "3", "--warmup-steps", "1", "--lr", "1e-2", "--valid", "0.25"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 3, 6]
    assert history[-1]["val_loss"] < 0.9 * history[0]["val_loss"]
    assert "3 validation rows" in (out / "training.log").read_text()

    llm = llama_tf.load(directory).load_adapter(out)
    peft = require("peft")
    torch = require("torch")
    ids = np.array([[1, 17, 250, 33, 9, 120]])
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(model, str(out)).eval()(torch.tensor(ids)).logits.numpy()
    with inference():
        ours = to_numpy(llm.model(ids))
    assert max_relative_error(ours, theirs) <= 1e-4


@pytest.mark.parametrize("options, message", [
    (["--seq-len", "4096"], "longer than the model's context"),
    (["--warmup-steps", "200"], "leaves no training"),
    (["--valid", "0.01"], "cannot spare a validation split"),
])
def test_lora_command_names_impossible_settings(base, tmp_path, capsys, options, message):
    (tmp_path / "text.txt").write_text("Simple is better than complex.\n" * 4)
    assert main(["lora", "--weights", str(base[1]), "--data", str(tmp_path / "text.txt"), "--out",
                 str(tmp_path / "out"), "--seq-len", "64", *options]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
