"""llama2.c `.bin` checkpoints (versions 0, 1 and 2 as llama2.c's export.py writes them, transcribed in
reference.py) and its `tokenizer.bin`: the same logits as the Hugging Face checkpoint they came from
(float32: 1e-6 of their scale against our load of it, 1e-4 against transformers; version 2 stores int8
groups: within their rounding), and every malformed header refused by name."""

import io
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import llama_tf
from llama_tf.formats import CheckpointError, read_checkpoint
from reference import hf_logits, hf_model, max_relative_error, write_hf, write_llama2c, write_llama2c_tokenizer

SHAPE = dict(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2, vocab_size=384,
             max_position_embeddings=128)


@pytest.fixture(scope="module", params=[True, False], ids=["shared", "separate"])
def model(request):
    return hf_model(tie_word_embeddings=request.param, **SHAPE)


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, 384, size=(2, 30))


@pytest.mark.parametrize("version, tolerance", [(0, 1e-6), (1, 1e-6), (2, 5e-2)])
def test_logits_match_the_source_checkpoint(model, tmp_path, tiny_tokenizer_proto, token_ids, version, tolerance):
    hf_dir = write_hf(model, tmp_path / "hf", tiny_tokenizer_proto)
    (tmp_path / "bin").mkdir()
    path = write_llama2c(model, tmp_path / "bin" / "model.bin", version)
    (tmp_path / "bin" / "tokenizer.model").write_bytes(tiny_tokenizer_proto)
    llm = llama_tf.load(path)
    assert llm.config.tie_embeddings == model.config.tie_word_embeddings
    ours = np.asarray(llm.model(token_ids))
    assert max_relative_error(ours, np.asarray(llama_tf.load(hf_dir).model(token_ids))) <= tolerance
    if version < 2:
        assert max_relative_error(ours, hf_logits(model, token_ids)) <= 1e-4


def test_tokenizer_bin_beside_the_weights(model, tmp_path, tiny_tokenizer_proto):
    write_llama2c(model, tmp_path / "model.bin", 1)
    write_llama2c_tokenizer(tiny_tokenizer_proto, tmp_path / "tokenizer.bin")
    tok = llama_tf.load(tmp_path / "model.bin").tokenizer
    reference = llama_tf.Tokenizer(tiny_tokenizer_proto)
    assert type(tok).__name__ == "Llama2cTokenizer"
    for text in ["Beautiful is better than ugly.", "  spaces", "1234 🦙", ""]:
        assert tok.tokenize(text).numpy().tolist() == reference.tokenize(text).numpy().tolist()
        assert tok.detokenize(tok.tokenize(text)) == text


def test_malformed_files(model, tmp_path):
    good = write_llama2c(model, tmp_path / "good.bin", 1).read_bytes()
    cases = {
        "truncated.bin": (good[:-4], "bytes, but its header .* means"),
        "version3.bin": (good[:4] + struct.pack("<i", 3) + good[8:], "version 3; llama_tf reads versions 0, 1 and 2"),
        "short.bin": (good[:100], "header is cut short"),
        "noise.bin": (bytes(range(256)) * 3, "not a llama2.c checkpoint"),
        "zero_heads.bin": (good[:8] + struct.pack("<7i", 64, 192, 2, 0, 2, 384, 128) + good[36:],
                           "n_heads must be a positive integer"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(tmp_path / name)


@pytest.mark.parametrize("version", [1, 2])
def test_a_file_cut_after_indexing_is_named(model, tmp_path, version):
    "The header was read and the size checked; then the file shrank before its tensors were read."
    path = write_llama2c(model, tmp_path / "model.bin", version)
    checkpoint = read_checkpoint(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="the file ends inside a tensor"):
        for tensor in checkpoint.tensors.values():
            tensor.load()


def test_pytorch_pickles_are_never_read(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\n.")
    (tmp_path / "pytorch_model.bin").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="pytorch_model.bin .pickle. is never read"):
        read_checkpoint(tmp_path / "pytorch_model.bin")


@settings(max_examples=200, deadline=None)
@given(header=st.binary(min_size=0, max_size=300), tail=st.integers(0, 4096))
def test_any_header_is_read_or_refused_quickly(tmp_path_factory, header, tail):
    "Random headers (ak42 or legacy), random sizes: a CheckpointError or a checkpoint, never anything else."
    path = tmp_path_factory.mktemp("fuzz") / "x.bin"
    for prefix in (b"", struct.pack("<Ii", 0x616B3432, 1), struct.pack("<Ii", 0x616B3432, 2)):
        path.write_bytes(prefix + header + b"\0" * tail)
        try:
            read_checkpoint(path)
        except CheckpointError:
            pass
