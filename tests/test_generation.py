"""Generation with the key/value cache: equal to the uncached model step by step, independent of padding,
reproducible sampling that follows top-k / top-p, stop rules, and streaming that never splits a character.

Tolerance (float32): max |Δlogits| <= 1e-4 × max |logits of the uncached model|.
"""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import llama_tf
from llama_tf.generation import Decoder, TextStream, _grow, compiled_step
from llama_tf.sampling import Sampler
from llama_tf.model import call_with_cache, new_cache
from reference import hf_model, max_relative_error, write_hf

TOLERANCE = 1e-4
PROMPTS = ["Beautiful is better than ugly.", "Simple", "Now is better than never. Although never is often"]


@pytest.fixture(scope="module", params=["multi-head", "grouped-query"])
def llm(request, tmp_path_factory, tiny_tokenizer_proto):
    kv_heads = {"multi-head": 4, "grouped-query": 2}[request.param]
    model = hf_model(num_key_value_heads=kv_heads, num_hidden_layers=3)
    return llama_tf.load(write_hf(model, tmp_path_factory.mktemp("llm"), tiny_tokenizer_proto), max_seq_len=64)


def tokens(llm, text):
    return llm.tokenizer.tokenize(text).numpy().tolist()


def test_every_decode_step_matches_the_uncached_model(llm):
    "Prefill, then one token per step: the logits of each step equal the full model on the whole sequence."
    ids = tokens(llm, PROMPTS[0])
    start = np.zeros(1, "int32")
    logits, cache = call_with_cache(llm.model, np.array([ids], "int32"), new_cache(llm.model, 1, 40), 0, start)
    for _ in range(16):
        uncached = np.asarray(llm.model(np.array([ids], "int32")))[0, -1]
        assert max_relative_error(logits[0], uncached) <= TOLERANCE
        ids.append(int(np.argmax(uncached)))
        logits, cache = call_with_cache(llm.model, np.array([ids[-1:]], "int32"), cache, len(ids) - 1, start)


def test_the_compiled_step_matches_the_uncached_model_across_cache_growth(llm):
    """`compiled_step` as the Decoder runs it: a prefill, then one-token steps on the grown cache (on
    TensorFlow held in variables and compiled by XLA once per capacity), past the point where it grows."""
    step = compiled_step(llm.model)
    ids = tokens(llm, PROMPTS[0])
    start = np.zeros(1, "int32")
    logits, cache = step(np.array([ids], "int32"), None, np.int32(0), start)
    in_place = keras.backend.backend() == "tensorflow"
    capacity = first = _grow(cache, len(ids), len(ids) + 1, in_place)
    while len(ids) < first + 4:
        if len(ids) % 8 == 0 or len(ids) > first - 2:
            uncached = np.asarray(llm.model(np.array([ids], "int32")))[0, -1]
            assert max_relative_error(logits[0], uncached) <= TOLERANCE, len(ids)
        ids.append(int(np.argmax(logits[0])))
        if len(ids) > capacity:
            capacity = _grow(cache, capacity, len(ids), in_place)
        logits, cache = step(np.array([ids[-1:]], "int32"), cache, np.int32(len(ids) - 1), start)
    assert capacity > first
    if in_place:   # compiled once per capacity, not once per token
        assert step.in_place.experimental_get_tracing_count() == 2


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the choice is TensorFlow's")
def test_graph_decode_steps_give_what_xla_steps_give(llm):
    "`Decoder(xla=False)` keeps TensorFlow's decode steps in the graph: the same tokens for a padded batch."
    prompts = [tokens(llm, p) for p in PROMPTS]
    graph = Decoder(llm.model, llm.config.max_seq_len, xla=False)
    steps = [np.stack(list(decoder(prompts, 12, Sampler()))) for decoder in (graph, llm.decoder)]
    np.testing.assert_array_equal(steps[0], steps[1])


class Recording(Sampler):
    "Greedy, keeping each step's logits; a step per call (as any sampler other than greedy's)."

    def __init__(self):
        super().__init__(temperature=1.0)
        self.logits = []

    def __call__(self, logits):
        self.logits.append(np.asarray(logits))
        return np.argmax(self.logits[-1], axis=-1).astype("int32")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's cache in variables")
def test_short_prompts_reuse_free_cache_variables_and_never_shared_ones(llm):
    """A short prompt's cache variables go back to the Decoder when its generation ends; the next one of
    that batch and length takes them as they were left (an earlier, longer generation's keys and values past
    its own slots) and computes a fresh Decoder's logits. Two generations running at once hold one set each."""
    prompts = [tokens(llm, p) for p in PROMPTS]

    def run(decoder, prompt):
        sampler = Recording()
        return decoder([prompt], 12, sampler, stop_ids=()), sampler.logits

    decoder = Decoder(llm.model, llm.config.max_seq_len)
    assert decoder.in_place and max(len(p) for p in prompts) <= max(decoder.short_widths)
    assert list(decoder(prompts[2:], 40, Sampler(), stop_ids=()))   # writes slots the others' prompts do not
    (key, held), = decoder._free_caches.items()
    expected = []
    for prompt in prompts:
        steps, logits = run(Decoder(llm.model, llm.config.max_seq_len), prompt)
        expected.append((list(steps), np.stack(logits)))
        steps, logits = run(decoder, prompt)
        assert list(steps) == expected[-1][0] and max_relative_error(np.stack(logits), expected[-1][1]) <= 1e-6
        assert decoder._free_caches[key] is held                   # the same variables, not made again
    (first, first_logits), (second, second_logits) = run(decoder, prompts[0]), run(decoder, prompts[1])
    together = list(zip(first, second))                             # their steps alternate
    assert [a for a, _ in together] == expected[0][0] and [b for _, b in together] == expected[1][0]
    assert max_relative_error(np.stack(first_logits), expected[0][1]) <= 1e-6
    assert max_relative_error(np.stack(second_logits), expected[1][1]) <= 1e-6


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="PyTorch decodes one eager step per call")
def test_greedy_steps_in_one_compiled_loop_equal_single_steps(llm):
    """Greedy decoding by GREEDY_STEPS tokens per compiled loop (JAX's `fori_loop`, TensorFlow's XLA
    `while_loop` on a cache in variables) gives the tokens of one step per call, alone and in a batch."""
    prompts = [tokens(llm, p) for p in PROMPTS]
    looped, single = (Decoder(llm.model, llm.config.max_seq_len) for _ in range(2))
    assert looped.greedy_steps is not None and (looped.in_place or keras.backend.backend() != "tensorflow")
    single.greedy_steps = None
    for batch in (prompts[:1], prompts):
        np.testing.assert_array_equal(*(np.stack(list(d(batch, 20, Sampler()))) for d in (looped, single)))


def test_cached_greedy_equals_uncached_greedy(llm):
    prompt = tokens(llm, PROMPTS[2])
    ids = list(prompt)
    for _ in range(20):
        ids.append(int(np.argmax(np.asarray(llm.model(np.array([ids], "int32")))[0, -1])))
    assert llm.generate_ids(prompt, 20, stop_ids=()) == ids[len(prompt):]


def test_padding_does_not_change_any_row(llm):
    "A batch of prompts of different lengths gives each row exactly what it gives alone."
    prompts = [tokens(llm, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 3
    alone = [llm.generate_ids(p, 12, stop_ids=()) for p in prompts]
    assert llm.generate_ids(prompts, 12, stop_ids=()) == alone
    assert llm.generate(PROMPTS, 12) == [llm.generate(p, 12) for p in PROMPTS]

    width = max(len(p) for p in prompts)
    start = np.array([width - len(p) for p in prompts], "int32")
    padded = np.array([[0] * s + p for s, p in zip(start, prompts)], "int32")
    batch_logits, _ = call_with_cache(llm.model, padded, new_cache(llm.model, 3, 64), 0, start)
    for row, p in enumerate(prompts):
        single, _ = call_with_cache(llm.model, np.array([p], "int32"), new_cache(llm.model, 1, 64), 0, np.zeros(1, "int32"))
        assert max_relative_error(batch_logits[row], single[0]) <= TOLERANCE


def test_generation_stops_at_a_stop_id_and_at_a_full_context(llm):
    prompt = tokens(llm, PROMPTS[0])
    free = llm.generate_ids(prompt, 10, stop_ids=())
    assert llm.generate_ids(prompt, 10, stop_ids=[free[3]]) == free[: free.index(free[3]) + 1]
    assert len(prompt) + len(llm.generate_ids(prompt, 1000, stop_ids=())) == llm.config.max_seq_len
    rows = llm.generate_ids([prompt, prompt[:2]], 1000, stop_ids=())   # each row fills its own context
    assert [len(r) for r in rows] == [llm.config.max_seq_len - len(prompt), llm.config.max_seq_len - 2]


def test_eos_is_the_default_stop(llm, monkeypatch):
    prompt = tokens(llm, PROMPTS[1])
    free = llm.generate_ids(prompt, 10, stop_ids=())
    monkeypatch.setattr(llm.tokenizer, "eos_id", free[2])
    assert llm.generate_ids(prompt, 10) == free[: free.index(free[2]) + 1]


def test_sampling_is_reproducible_and_top_k_1_is_greedy(llm):
    first = llm.generate(PROMPTS[0], 16, temperature=1.0, seed=7)
    assert llm.generate(PROMPTS[0], 16, temperature=1.0, seed=7) == first
    assert llm.generate(PROMPTS[0], 16, temperature=1.0, seed=8) != first
    greedy = llm.generate(PROMPTS[0], 16)
    assert llm.generate(PROMPTS[0], 16, temperature=5.0, top_k=1, seed=1) == greedy
    assert llm.generate(PROMPTS[0], 16, temperature=5.0, top_p=1e-9, seed=1) == greedy


def test_sampler_follows_temperature_top_k_and_meta_nucleus_rule():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.tile(np.log(probs), (40_000, 1))

    def frequencies(**options):
        return np.bincount(Sampler(seed=0, **options)(logits), minlength=4) / len(logits)

    np.testing.assert_allclose(frequencies(temperature=1.0), probs, atol=0.01)
    np.testing.assert_allclose(frequencies(temperature=1.0, top_k=2), [0.625, 0.375, 0, 0], atol=0.01)
    # Meta's rule keeps a token while the mass before it is <= p: 0.7 keeps 0 (before: 0) and 1 (0.5), not 2 (0.8)
    np.testing.assert_allclose(frequencies(temperature=1.0, top_p=0.7), [0.625, 0.375, 0, 0], atol=0.01)
    np.testing.assert_allclose(frequencies(temperature=1.0, top_p=0.85), [0.5, 0.3, 0.15, 0] / np.float64(0.95),
                               atol=0.01)
    sharpened = probs ** 2 / np.sum(probs ** 2)
    np.testing.assert_allclose(frequencies(temperature=0.5), sharpened, atol=0.01)


@pytest.mark.parametrize("options, message", [
    (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(top_k=2.5), "top_k must be an integer >= 0"),
    (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be a number in \(0, 1\]"),
    (dict(seed="1"), "seed must be an integer >= 0 or None"),
    (dict(seed=-1), "seed must be an integer >= 0 or None"),
    (dict(stop=""), "stop must be a non-empty string or a list of them"),
    (dict(stop=["ok", 3]), "stop must be a non-empty string or a list of them"),
])
def test_invalid_sampling_arguments(llm, options, message):
    with pytest.raises(ValueError, match=message):
        llm.generate(PROMPTS[0], 4, **options)


def test_extreme_numbers_give_the_limit_they_approach(llm):
    "A tiny temperature is greedy (the logits once overflowed to ±inf); a huge budget stops at the context."
    greedy = llm.generate(PROMPTS[0], 8)
    assert llm.generate(PROMPTS[0], 8, temperature=1e-320, seed=0) == greedy
    assert llm.generate(PROMPTS[0], 10**20, stop=None) == llm.generate(PROMPTS[0], llm.config.max_seq_len)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["temperature", "top_k", "top_p", "seed"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
                       st.booleans(), st.text(max_size=3), st.none()))
def test_any_sampling_number_is_accepted_or_named(name, value):
    "Every value either makes a Sampler that draws a valid id, or is a ValueError naming the argument."
    try:
        sampler = Sampler(**{name: value})
    except ValueError as e:
        assert str(e).startswith(f"{name} must be"), e
        return
    ids = sampler(np.array([[0.0, 3.0, 1.0, -1e30]], "float32"))
    assert ids.shape == (1,) and 0 <= ids[0] < 4


def test_streaming_a_batch_is_refused(llm):
    with pytest.raises(ValueError, match="stream=True generates one prompt at a time"):
        llm.generate(PROMPTS, 4, stream=True)


def test_stop_strings_end_the_text_before_them(llm):
    text = llm.generate(PROMPTS[0], 24)
    stop = text[5:8]
    expected = text[: text.find(stop)]
    assert llm.generate(PROMPTS[0], 24, stop=stop) == expected
    assert llm.generate(PROMPTS[0], 24, stop=["never appears \x00", stop]) == expected
    assert "".join(llm.generate(PROMPTS[0], 24, stop=stop, stream=True)) == expected


def test_stream_yields_the_same_text_piece_by_piece(llm):
    pieces = list(llm.generate(PROMPTS[2], 24, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate(PROMPTS[2], 24)
    sampled = dict(temperature=0.9, top_k=50, top_p=0.9, seed=5)
    assert "".join(llm.generate(PROMPTS[2], 24, stream=True, **sampled)) == llm.generate(PROMPTS[2], 24, **sampled)


def test_stream_never_splits_a_multibyte_character(llama_tokenizer_path):
    "Byte-fallback pieces arrive one UTF-8 byte at a time; the stream holds them until a character is whole."
    tokenizer = llama_tf.Tokenizer(llama_tokenizer_path)
    text = "Grüße aus Köln 🦙 — 東京で会いましょう, naïve café"
    ids = tokenizer.tokenize(text).numpy().tolist()
    byte_pieces = [i for i in ids if tokenizer.id_to_string(i).startswith("<0x")]
    assert len(byte_pieces) >= 4                                     # the llama emoji has no piece of its own
    stream = TextStream(tokenizer, ids[:1])                          # prompt: BOS
    pieces = [stream.push(i) for i in ids[1:]] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces                                              # something was held back


def test_stream_holds_back_what_may_start_a_stop_string(llama_tokenizer_path):
    tokenizer = llama_tf.Tokenizer(llama_tokenizer_path)
    ids = tokenizer.tokenize("one\n\nEN").numpy().tolist()
    stream = TextStream(tokenizer, ids[:1], stop=["\n\nEND"])
    emitted = "".join(stream.push(i) for i in ids[1:])
    assert emitted == "one" and not stream.stopped                   # "\n\nEN" may become "\n\nEND"...
    assert stream.flush() == "\n\nEN"                                # ...until the end says it did not


def test_bfloat16_model_generates_like_float32(tmp_path, tiny_tokenizer_proto):
    "Computing in bfloat16 (weights and activations; softmax and norms in float32) stays close to float32."
    directory = write_hf(hf_model(num_key_value_heads=2), tmp_path, tiny_tokenizer_proto)
    full, half = llama_tf.load(directory), llama_tf.load(directory, dtype="bfloat16")
    ids = np.array([tokens(full, PROMPTS[2])], "int32")
    assert max_relative_error(half.model(ids), full.model(ids)) <= 3e-2     # bfloat16 keeps 8 bits of mantissa
    steps = half.generate_ids(ids[0].tolist(), 8, stop_ids=())
    assert len(steps) == 8
    cached, _ = call_with_cache(half.model, ids, new_cache(half.model, 1, 64), 0, np.zeros(1, "int32"))
    assert max_relative_error(cached[0], np.asarray(half.model(ids))[0, -1]) <= 3e-2
