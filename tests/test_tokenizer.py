"""`llama_tf.Tokenizer` against the `sentencepiece` library, on the LLaMA tokenizer from ../shared and on a
small model trained in the tests."""

import numpy as np
import pytest
import tensorflow as tf

import llama_tf
from conftest import require, shared_path

AWKWARD = ["", " ", "  two leading spaces", "trailing  ", "tabs\tand\nnewlines\r\n", "Grüße, naïve café",
           "日本語のテキスト", "🦙🐝 emoji 👩‍👩‍👧", "\u200b zero width", "x" * 2000, "<s> not a control token </s>",
           "12345 digits 3.14159"]


@pytest.fixture(scope="module")
def llama(llama_tokenizer_path):
    return llama_tf.Tokenizer(llama_tokenizer_path)


@pytest.fixture(scope="module")
def reference(llama_tokenizer_path):
    spm = require("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(llama_tokenizer_path))


@pytest.fixture(scope="module")
def corpus():
    return shared_path("data/tinyshakespeare.txt").read_text().split("\n") + AWKWARD


def test_facts_of_the_llama_tokenizer(llama):
    "Facts listed in ../shared/README.md."
    assert llama.tokenize("The best way to attract bees").numpy().tolist() == [1, 450, 1900, 982, 304, 13978, 367, 267]
    assert llama.tokenize("working").numpy().tolist() == [1, 1985]
    assert llama.tokenize("flexing").numpy().tolist() == [1, 8525, 292]
    assert llama.id_to_string([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert (llama.vocab_size, llama.bos_id, llama.eos_id, llama.unk_id) == (32000, 1, 2, 0)


def test_ids_match_sentencepiece_on_every_line(llama, reference, corpus):
    ours = llama.tokenize(corpus)
    assert ours.dtype == tf.int32
    assert ours.to_list() == reference.encode(corpus, add_bos=True)


def test_detokenize_inverts_tokenize(llama, reference, corpus):
    ids = llama.tokenize(corpus)
    assert llama.detokenize(ids) == corpus
    assert llama.detokenize(ids.to_list()) == reference.decode(ids.to_list())


def test_single_string_gives_1d_ids_and_str(llama):
    ids = llama.tokenize("To be, or not to be")
    assert ids.shape.rank == 1 and ids.dtype == tf.int32
    assert llama.detokenize(ids) == "To be, or not to be"
    assert llama.detokenize(ids.numpy().tolist()) == "To be, or not to be"
    assert llama.tokenize("").numpy().tolist() == [1]


def test_byte_fallback_for_characters_outside_the_vocabulary(llama):
    ids = llama.tokenize("🦙").numpy().tolist()
    assert llama.id_to_string(ids[-4:]) == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert llama.unk_id not in ids


def test_eos_option(llama_tokenizer_path):
    tok = llama_tf.Tokenizer(llama_tokenizer_path.read_bytes(), add_bos=False, add_eos=True)
    assert tok.tokenize("working").numpy().tolist() == [1985, 2]
    assert tok.detokenize([1985, 2]) == "working"


def test_works_inside_tf_function_and_tf_data(llama):
    @tf.function
    def round_trip(text):
        return llama.detokenize(llama.tokenize(text))

    assert round_trip(tf.constant("Exit, pursued by a bear.")).numpy().decode() == "Exit, pursued by a bear."
    lines = ["First Citizen:", "Before we proceed any further, hear me speak."]
    ds = tf.data.Dataset.from_tensor_slices(lines).map(llama.tokenize)
    assert [x.numpy().tolist() for x in ds] == [llama.tokenize(s).numpy().tolist() for s in lines]


def test_show_tokens(llama, capsys):
    llama_tf.show_tokens(llama, "flexing")
    assert capsys.readouterr().out.split() == ["1", "<s>", "8525", "▁flex", "292", "ing"]


def test_trained_tokenizer_matches_sentencepiece(tiny_tokenizer_proto):
    "The same checks on a model trained here, so they also run where ../shared is absent."
    spm = require("sentencepiece")
    ours = llama_tf.Tokenizer(tiny_tokenizer_proto)
    reference = spm.SentencePieceProcessor(model_proto=tiny_tokenizer_proto)
    texts = ["Beautiful is better than ugly.", "Explicit is better than implicit."] + AWKWARD
    assert ours.tokenize(texts).to_list() == reference.encode(texts, add_bos=True)
    assert ours.detokenize(ours.tokenize(texts)) == texts
    assert (ours.vocab_size, ours.bos_id, ours.eos_id) == (reference.vocab_size(), 1, 2)


LEADING_WHITESPACE = [lead * n + tail for n in range(1, 6) for lead in (" ", "\t", "\n", "\u3000")
                      for tail in ("", "y", " y", "Hello world")]


def _random_ids(vocab_size, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=rng.integers(0, 12)).tolist() for _ in range(n)]


@pytest.mark.parametrize("which", ["llama", "trained"])
def test_detokenize_matches_sentencepiece_on_leading_whitespace_and_random_ids(which, tiny_tokenizer_proto, request):
    """tensorflow_text's older decoder drops the "▁" of every leading piece (" y" -> "y"); `detokenize`
    must give the current library's text: exact round trips, and the same text for arbitrary ids
    (control tokens, lone bytes of multi-byte characters)."""
    spm = require("sentencepiece")
    proto = request.getfixturevalue("llama_tokenizer_path").read_bytes() if which == "llama" else tiny_tokenizer_proto
    ours, reference = llama_tf.Tokenizer(proto), spm.SentencePieceProcessor(model_proto=proto)
    assert ours.detokenize(ours.tokenize(LEADING_WHITESPACE)) == LEADING_WHITESPACE
    ids = _random_ids(ours.vocab_size)
    assert ours.detokenize(ids) == reference.decode(ids)


def test_a_tokenizer_made_before_seeding_keeps_working():
    """`tf.random.set_seed` (so `keras.utils.set_random_seed`) clears TensorFlow's eager kernels, which held the
    SentencePiece model: the tokenizer builds its op again instead of raising TensorFlow's NotFoundError."""
    import keras

    tok = llama_tf.Tokenizer(llama_tf.DEFAULT_WEIGHTS / "tokenizer.model")
    text = " y: O Romeo, Romeo!"
    ids, pieces = tok.encode(text), tok.id_to_string([5, 300])
    keras.utils.set_random_seed(0)
    assert tok.encode(text) == ids
    keras.utils.set_random_seed(1)
    assert tok.decode(ids) == text and tok.id_to_string([5, 300]) == pieces
    tf.random.set_seed(2)
    assert tok.detokenize(tok.tokenize([text, "abc"])) == [text, "abc"]


def _greek_model(tmp_path, byte_fallback: bool) -> bytes:
    spm = require("sentencepiece")
    import io

    text = ["Ἄνδρα μοι ἔννεπε, μοῦσα, πολύτροπον, ὃς μάλα πολλὰ πλάγχθη, ἐπεὶ Τροίης ἱερὸν πτολίεθρον ἔπερσε"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=300 if byte_fallback else 60,
                                   model_type="bpe", byte_fallback=byte_fallback, character_coverage=1.0,
                                   minloglevel=2)
    return model.getvalue()


@pytest.mark.parametrize("byte_fallback", [True, False], ids=["byte-fallback", "greek-letters-only"])
def test_a_vocabulary_without_latin_letters_opens_and_round_trips(tmp_path, byte_fallback):
    """A model trained on Greek alone has no one-letter ASCII piece: the decoder's sentinel is a Greek
    letter (two bytes), or with byte fallback its "A" (once a StopIteration, then a refusal)."""
    spm = require("sentencepiece")
    proto = _greek_model(tmp_path, byte_fallback=byte_fallback)
    tok = llama_tf.SentencePieceTokenizer(proto)
    reference = spm.SentencePieceProcessor(model_proto=proto)
    texts = ["μῆνιν ἄειδε θεά", " Ἄνδρα μοι", "  πολλὰ", ""] + (["Latin letters too"] if byte_fallback else [])
    for text in texts:
        assert tok.encode(text) == reference.encode(text)
        assert tok.decode(tok.encode(text)) == reference.decode(reference.encode(text))
        assert tok.detokenize(tok.tokenize(text)) == reference.decode(reference.encode(text))
