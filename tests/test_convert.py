"""`llama_tf.convert` and `python -m llama_tf convert`: any readable checkpoint to Hugging Face safetensors or
GGUF. The shipped model, trained in Keras, runs in llama.cpp with the same greedy text; round trips keep
the logits; writing over a sharded checkpoint leaves nothing of the old one to be read."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import llama_tf
from llama_tf.formats import hf as hf_format, read_checkpoint
from llama_tf import CheckpointError
from llama_tf.convert import convert
from conftest import ROOT, require
from reference import hf_model, max_relative_error, write_hf


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llama_tf", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_the_default_model_runs_in_llama_cpp(tmp_path):
    "Train in Keras, run anywhere: the converted GGUF gives llama.cpp the same greedy text."
    llama_cpp = require("llama_cpp")
    result = run_cli("convert", llama_tf.DEFAULT_WEIGHTS, tmp_path / "shakespeare.gguf")
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "shakespeare.gguf"), result.stderr
    llm = llama_tf.load()
    cpp = llama_cpp.Llama(str(tmp_path / "shakespeare.gguf"), verbose=False, n_ctx=256, n_threads=2)
    prompt = cpp.tokenize(b"ROMEO:", add_bos=True, special=False)
    assert prompt == llm.tokenizer.tokenize("ROMEO:").numpy().tolist()
    theirs = []
    for token in cpp.generate(prompt, temp=0.0, top_k=1):
        theirs.append(token)
        if len(theirs) == 48:
            break
    ours = llm.generate_ids(prompt, 48, stop_ids=())
    assert ours == theirs
    assert llm.generate("ROMEO:", 48).startswith(cpp.detokenize(theirs).decode()[:40])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    return write_hf(model, tmp_path_factory.mktemp("hf") / "hf", tiny_tokenizer_proto)


def test_round_trips_keep_the_logits(hf_dir, tmp_path):
    ids = np.random.default_rng(0).integers(3, 384, size=(2, 30))
    reference = np.asarray(llama_tf.load(hf_dir).model(ids))
    gguf = convert(hf_dir, tmp_path / "m.gguf")
    back = convert(gguf, tmp_path / "back")
    assert sorted(p.name for p in back.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    for path in (gguf, back):
        assert max_relative_error(np.asarray(llama_tf.load(path).model(ids)), reference) <= 1e-6
    half = convert(hf_dir, tmp_path / "half", dtype="bfloat16")
    assert max_relative_error(np.asarray(llama_tf.load(half).model(ids)), reference) <= 3e-2
    assert llama_tf.load(back).tokenizer.encode("Beautiful is better") == llama_tf.load(hf_dir).tokenizer.encode(
        "Beautiful is better")


def test_written_files_get_the_permissions_of_any_file_the_user_creates(hf_dir, tmp_path):
    "0666 less the umask, the folder 0777 less it: safetensors alone would leave the weights owner-only."
    old = os.umask(0o022)
    try:
        out = convert(hf_dir, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "tokenizer.model": 0o644}
    assert out.stat().st_mode & 0o777 == 0o755


def test_writing_over_a_sharded_checkpoint_leaves_only_the_new_one(hf_dir, tmp_path, monkeypatch):
    ids = np.random.default_rng(1).integers(3, 384, size=(1, 12))
    monkeypatch.setattr(hf_format, "SHARD_BYTES", 100_000)     # shards of ~100 kB
    sharded = convert(hf_dir, tmp_path / "out")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*"))) > 2
    assert max_relative_error(np.asarray(llama_tf.load(sharded).model(ids)),
                              np.asarray(llama_tf.load(hf_dir).model(ids))) <= 1e-6
    monkeypatch.setattr(hf_format, "SHARD_BYTES", 10**12)
    other = write_hf(hf_model(seed=5, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2), tmp_path / "other", (hf_dir / "tokenizer.model").read_bytes())
    convert(other, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                    "tokenizer.model"]
    assert max_relative_error(np.asarray(llama_tf.load(tmp_path / "out").model(ids)),
                              np.asarray(llama_tf.load(other).model(ids))) <= 1e-6


def test_bad_conversions(hf_dir, tmp_path):
    with pytest.raises(ValueError, match="dtype 'q8_0' for hf: one of float32, float16, bfloat16"):
        convert(hf_dir, tmp_path / "x", dtype="q8_0")
    with pytest.raises(ValueError, match="cannot convert to 'onnx'"):
        convert(hf_dir, tmp_path / "x", to="onnx")
    result = run_cli("convert", tmp_path / "missing", tmp_path / "y.gguf")
    assert result.returncode == 1 and result.stderr.startswith("error: checkpoint not found")
    assert "Traceback" not in result.stderr and not (tmp_path / "y.gguf").exists()


def test_an_interrupted_write_leaves_the_old_checkpoint(hf_dir, tmp_path):
    ids = np.random.default_rng(2).integers(3, 384, size=(1, 12))
    target = convert(hf_dir, tmp_path / "out")
    (target / "training.log").write_text("step 100\n")
    before = np.asarray(llama_tf.load(target).model(ids))
    checkpoint = read_checkpoint(hf_dir)

    def failing():
        raise OSError("disk full")

    tensors = {name: ref.load for name, ref in checkpoint.tensors.items()}
    tensors["layers.1.feed_forward.w2.weight"] = failing
    with pytest.raises(OSError, match="disk full"):
        hf_format.write_hf(target, checkpoint.config, tensors)
    assert max_relative_error(np.asarray(llama_tf.load(target).model(ids)), before) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]               # no staging folder left
    convert(hf_dir, target, dtype="bfloat16")                                  # a complete write...
    assert (target / "training.log").read_text() == "step 100\n"               # ...keeps the other files


def test_a_kill_at_any_moment_leaves_the_old_or_the_new_checkpoint(hf_dir, tmp_path, tiny_tokenizer_proto):
    "SIGKILL a process writing checkpoint B over A at several moments: what loads is A or B, never a mix."
    import signal
    import time

    ids = np.random.default_rng(3).integers(3, 384, size=(1, 12))
    a = convert(hf_dir, tmp_path / "a")
    b = write_hf(hf_model(seed=9, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          num_key_value_heads=2), tmp_path / "b", tiny_tokenizer_proto)
    logits = {name: np.asarray(llama_tf.load(path).model(ids)) for name, path in (("a", a), ("b", b))}
    script = (f"from llama_tf.convert import convert\nwhile True:\n    convert({str(b)!r}, {str(a)!r})\n"
              f"    convert({str(hf_dir)!r}, {str(a)!r})\n")
    for delay in (0.5, 2.0, 2.3, 2.6, 3.1):
        process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        now = np.asarray(llama_tf.load(a).model(ids))
        assert any(np.array_equal(now, v) for v in logits.values()), delay
    convert(hf_dir, a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]   # the killed writers' stages: gone


def test_the_leftovers_of_a_killed_writer_are_cleared_by_the_next_write(hf_dir, tmp_path):
    "A stage is removed; an old checkpoint caught between two renames (no atomic exchange) is put back first."
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    (tmp_path / f".out.partial-{dead}").mkdir()
    (tmp_path / f".out.partial-{dead}" / "model.safetensors").write_bytes(b"half a shard")
    old = convert(hf_dir, tmp_path / f".out.old-{dead}")
    (old / "training.log").write_text("step 100\n")
    running = tmp_path / f".out.partial-{os.getpid()}-other"   # not a stage name: left alone
    running.mkdir()
    convert(hf_dir, tmp_path / "out", dtype="bfloat16")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "out"]
    assert (tmp_path / "out" / "training.log").read_text() == "step 100\n"
    assert llama_tf.load(tmp_path / "out").config.vocab_size == llama_tf.load(hf_dir).config.vocab_size


def contents(path):
    "A file's bytes, or a folder's files and their bytes."
    return path.read_bytes() if path.is_file() else {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("target", ["model.gguf", "hf"])
def test_two_writers_of_one_target_leave_one_whole_output(hf_dir, tmp_path, target):
    """Two processes converting to one .gguf (or one Hugging Face folder) at the same moments, many times:
    what is left is always one writer's whole output (a shared `.partial` once mixed both: wrong logits)."""
    outputs = {dtype: contents(convert(hf_dir, tmp_path / dtype / target, dtype=dtype))
               for dtype in ("float32", "float16")}
    destination = tmp_path / "race" / target
    script = ("import sys\nfrom llama_tf.convert import convert\n"
              f"for _ in range(15):\n    convert({str(hf_dir)!r}, {str(destination)!r}, dtype=sys.argv[1])\n")
    writers = [subprocess.Popen([sys.executable, "-c", script, dtype], env={**os.environ, "PYTHONPATH": str(ROOT)})
               for dtype in outputs]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    assert contents(destination) in outputs.values()
    assert [p.name for p in destination.parent.iterdir()] == [target]      # no stage left behind


def test_saving_over_a_checkpoint_keeps_the_files_it_does_not_write(hf_dir, tmp_path):
    "save_hf_checkpoint writes no tokenizer: the one beside the old weights stays, and the folder still loads."
    from llama_tf.loading import save_hf_checkpoint

    llm = llama_tf.load(hf_dir)
    folder = shutil.copytree(hf_dir, tmp_path / "checkpoint")
    save_hf_checkpoint(llm.model, llm.config, folder)
    assert (folder / "tokenizer.model").read_bytes() == (hf_dir / "tokenizer.model").read_bytes()
    assert llama_tf.load(folder).config == llm.config


@pytest.mark.parametrize("to", ["gguf", "hf"])
def test_a_full_disk_is_named_and_the_old_checkpoint_kept(hf_dir, tmp_path, monkeypatch, to):
    "The writers' own errors on a full disk (numpy's short write, SafetensorError) say nothing of space."
    import gguf
    import safetensors.numpy

    old = convert(hf_dir, tmp_path / ("out.gguf" if to == "gguf" else "out"))
    before = sorted((p.name, p.read_bytes()) for p in ([old] if old.is_file() else old.iterdir()))

    def full(*args, **kwargs):
        raise OSError("147456 requested and 74424 written") if to == "gguf" else \
            safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 4096))
    with pytest.raises(CheckpointError, match=r"cannot write .*out.*: the disk is full \(4,096 bytes free\)"):
        convert(hf_dir, old, dtype="float16")
    assert sorted((p.name, p.read_bytes()) for p in ([old] if old.is_file() else old.iterdir())) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
