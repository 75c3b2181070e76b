"""Every option of both command lines, given bad values: one `error:` line, a non-zero exit, no traceback.

The cases are read from the parsers themselves, so an option added later is covered without editing
this file: every option that takes a number or a choice is given values it must refuse, and every
argument that names a file or folder is given one that is missing or of the wrong kind."""

import argparse
import contextlib
import io
import os
import shlex
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from llama_tf import __main__ as llama_cli
from llama_tf import train as train_cli
from conftest import ROOT

CLIS = {"llama_tf": llama_cli, "llama_tf.train": train_cli}
# Arguments each subcommand needs, so that parsing reaches the option under test (paths are made below).
REQUIRED = {"generate": ["ROMEO:"], "chat": [], "convert": ["SRC", "DST"], "eval": ["TEXT"],
            "prepare": ["--text", "TEXT", "--out", "OUT"], "fit": ["--data", "DATA", "--out", "OUT"], "plot": ["OUT"],
            "lora": ["--data", "TEXT", "--out", "OUT"], "export": ["SRC", "DST"]}
NOT_NUMBERS = ["x", "", "nan", "inf", "-inf", "1e999", "-1", "0x10", "1,5"]


def subcommands(cli):
    (choices,) = [a.choices for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


def options():
    "(cli, subcommand, option, values it must refuse) for every option that takes a number or a choice."
    for name, cli in CLIS.items():
        for command, sub in subcommands(cli).items():
            for action in sub._actions:
                if not action.option_strings or action.nargs == 0:
                    continue
                if action.choices:
                    yield name, command, action.option_strings[0], ["x", "", *(["-1", "3"] if action.type is int else [])]
                elif action.type not in (None, str):
                    yield name, command, action.option_strings[0], NOT_NUMBERS


def run(name, argv, capsys):
    "`main(argv)` of the command line `name`: (exit status, stderr)."
    try:
        status = CLIS[name].main(argv)
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question. " * 20)
    return {"SRC": str(ROOT / "weights" / "shakespeare"), "DST": str(tmp_path / "converted"),
            "TEXT": str(tmp_path / "text.txt"), "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data")}


def test_the_cases_cover_every_subcommand():
    covered = {(name, command) for name, command, _, _ in options()}
    assert covered == {(name, c) for name, cli in CLIS.items() for c in subcommands(cli)} - {("llama_tf.train", "plot")}
    assert len(list(options())) >= 40


@pytest.mark.parametrize("name, command, option, values", list(options()),
                         ids=[f"{n} {c} {o}" for n, c, o, _ in options()])
def test_a_bad_value_for_any_option_is_one_error_line(name, command, option, values, paths, capsys):
    for value in values:
        argv = [command, *(paths.get(a, a) for a in REQUIRED[command]), f"{option}={value}"]
        status, err = run(name, argv, capsys)
        assert status == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"error: python -m {name} {command}: argument {option}"), err
    assert not os.path.exists(paths["OUT"]) and not os.path.exists(paths["DST"])   # nothing was written


@pytest.mark.parametrize("name, argv, message", [
    ("llama_tf", ["generate", "x", "--weights", "MISSING"], "checkpoint not found: MISSING"),
    ("llama_tf", ["chat", "--weights", "MISSING"], "checkpoint not found: MISSING"),
    ("llama_tf", ["eval", "MISSING"], "No such file or directory: 'MISSING'"),
    ("llama_tf", ["eval", "TMP"], "Is a directory: 'TMP'"),
    ("llama_tf", ["eval", "TEXT", "--weights", "TEXT"], "not a LLaMA checkpoint llama_tf can read"),
    ("llama_tf", ["eval", "TEXT", "--context", "100000"], "context 100000 is longer than the model's max_seq_len 256"),
    ("llama_tf", ["eval", "TEXT", "--context", "16", "--stride", "64"], "stride must be between 1 and context - 1"),
    ("llama_tf", ["convert", "MISSING", "DST"], "checkpoint not found: MISSING"),
    ("llama_tf", ["convert", "SRC", "TEXT"], "TEXT exists and is not a folder"),
    ("llama_tf", ["convert", "SRC", "TEXT/sub.gguf"], "TEXT exists and is not a folder"),
    ("llama_tf", ["convert", "SRC", "DST", "--tokenizer", "MISSING"], "tokenizer file not found: MISSING"),
    ("llama_tf", ["convert", "SRC", "DST", "--tokenizer", "TEXT"], "not a SentencePiece model"),
    ("llama_tf", ["generate", "x" * 3000], "the prompt is 3001 tokens, longer than the model's context of 256"),
    ("llama_tf", ["generate", "x", "--dtype", "gguf"], "dtype='gguf' keeps a GGUF file's tensors in their stored types"),
    ("llama_tf.train", ["prepare", "--text", "MISSING", "--out", "OUT"], "No such file or directory: 'MISSING'"),
    ("llama_tf.train", ["prepare", "--text", "TMP", "--out", "OUT"], "Is a directory"),
    ("llama_tf.train", ["prepare", "--text", "BINARY", "--out", "OUT"], "BINARY: not UTF-8 text"),
    ("llama_tf.train", ["prepare", "--text", "TEXT", "--out", "OUT", "--vocab-size", "100000"],
     "sentencepiece cannot train this tokenizer: Vocabulary size too high"),
    ("llama_tf.train", ["fit", "--data", "MISSING", "--out", "OUT"], "MISSING: no prepare.json; expected a folder written by `prepare`"),
    ("llama_tf.train", ["fit", "--data", "TMP", "--out", "OUT"], "no prepare.json"),
    ("llama_tf.train", ["plot", "MISSING"], "MISSING: no history.json; expected a folder written by `fit`"),
])
def test_a_bad_file_or_setting_is_one_error_line(name, argv, message, paths, tmp_path, capsys):
    paths = {**paths, "MISSING": str(tmp_path / "missing"), "TMP": str(tmp_path), "BINARY": str(tmp_path / "x.bin")}
    (tmp_path / "x.bin").write_bytes(bytes(range(256)))
    for key in ("TEXT", "MISSING", "BINARY", "TMP"):          # longest first: TEXT's path contains TMP's
        argv = [a.replace(key, paths[key]) if key in a else a for a in argv]
        message = message.replace(key, paths[key])
    argv = [paths.get(a, a) for a in argv]
    status, err = run(name, argv, capsys)
    assert status == 1 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not os.path.exists(paths["OUT"]) and not os.path.exists(paths["DST"])


@pytest.mark.parametrize("name", CLIS)
def test_from_a_shell_an_error_is_the_only_line(name, tmp_path):
    "Run as a program: TensorFlow's and absl's log lines stay out too."
    result = subprocess.run([sys.executable, "-m", name, "plot" if name == "llama_tf.train" else "eval",
                             str(tmp_path / "missing")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr


def documented_commands():
    "Every `python -m llama_tf…` command in the READMEs' bash blocks, joined across `\\` line ends."
    for readme in (ROOT / "README.md", ROOT / "weights" / "README.md"):
        blocks = readme.read_text().split("```bash")[1:]
        text = "\n".join(block.split("```")[0] for block in blocks).replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0]:       # KERAS_BACKEND=jax python -m …
                words.pop(0)
            if words[:2] == ["python", "-m"] and words[2] in CLIS:
                yield readme.name, words[2], words[3:]


@pytest.mark.parametrize("readme, name, argv", list(documented_commands()))
def test_documented_commands_parse(readme, name, argv):
    "What the READMEs tell users to type is accepted (the model card's `--weight-decay 1.0` once was not)."
    try:
        CLIS[name].parser().parse_args(argv)
    except SystemExit as exit:     # --help exits 0; a refused argument exits 2
        assert exit.code == 0, f"{readme}: python -m {name} {' '.join(argv)}"


def test_the_readmes_document_both_command_lines():
    assert {name for _, name, _ in documented_commands()} == set(CLIS)


def test_help_states_every_default():
    "Every option with a default says it in `--help`: the default itself, or help text that says what it is."
    for name, cli in CLIS.items():
        for command, sub in subcommands(cli).items():
            text = sub.format_help()
            for action in sub._actions:
                default = action.default
                if action.option_strings and action.nargs != 0 and default is not None and default != [] \
                        and default is not argparse.SUPPRESS:
                    assert "default" in (action.help or ""), f"{name} {command} {action.option_strings[0]}"
            assert "%(default)" not in text
    generate = subcommands(llama_cli)["generate"].format_help()
    assert "default: 100" in generate and "(default: 0)" in generate


def test_generate_says_when_the_context_cuts_the_continuation(capsys):
    status, err = run("llama_tf", ["generate", "ROMEO:", "--max-new-tokens", "300", "--temperature", "0"], capsys)
    assert status == 0
    assert "note: the model's context is 256 tokens; at most 253 new tokens follow this prompt" in err
    status, err = run("llama_tf", ["generate", "ROMEO:", "--max-new-tokens", "3"], capsys)
    assert status == 0 and err == ""


def test_generate_from_a_gguf_held_as_stored(tmp_path, capsys):
    "The shipped model converted to a Q4_K GGUF, generated from with --dtype gguf: the same text as the Python API's."
    import llama_tf
    from llama_tf.convert import convert

    path = convert(ROOT / "weights" / "shakespeare", tmp_path / "shakespeare-q4_k.gguf", dtype="q4_k")
    status = llama_cli.main(["generate", "ROMEO:", "--weights", str(path), "--dtype", "gguf", "--temperature", "0",
                             "--max-new-tokens", "12"])
    printed = capsys.readouterr()
    assert status == 0 and printed.err == ""
    assert printed.out == "ROMEO:" + llama_tf.load(path, dtype="gguf").generate("ROMEO:", 12, temperature=0) + "\n"


def test_chat_replies_fit_the_context_by_default(monkeypatch, capsys):
    "The shipped model's context is 256 tokens: a default reply is at most 128, so a second message still fits."
    replies = []
    import llama_tf.llm

    original = llama_tf.llm.LLM.chat

    def spy(self, messages, max_new_tokens, *args, **kwargs):
        replies.append(max_new_tokens)
        return original(self, messages, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(llama_tf.llm.LLM, "chat", spy)
    lines = iter(["Good morrow.", "How now?"])

    def answer(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None                    # Ctrl-D after two messages

    monkeypatch.setattr("builtins.input", answer)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    status, err = run("llama_tf", ["chat", "--temperature", "0"], capsys)
    assert status == 0 and replies == [128, 128]
    assert "context full" not in err
    # The shipped model is a base model: said once, before the first prompt.
    assert err.count("note: this model does not say it was tuned for chat") == 1


NUMERIC = [case[:3] for case in options() if case[3] is NOT_NUMBERS]


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(NUMERIC),
       value=st.one_of(st.floats(), st.integers(-2**80, 2**80), st.floats(-1e-300, 1e-300)).map(str))
def test_any_number_is_parsed_or_refused_in_one_line(case, value):
    "Huge, tiny, negative, NaN and infinite values of every numeric option: a setting, or one error line."
    name, command, option = case
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            CLIS[name].parser().parse_args([command, *REQUIRED[command], f"{option}={value}"])
        except SystemExit as exit:
            assert exit.code == 2
            assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1, err.getvalue()
