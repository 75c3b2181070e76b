"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes `draft_tokens`
tokens one at a time, the target model scores them all in one call, and the longest run it agrees with is
kept, with one token of its own after it. Each round costs the target one call for up to
`draft_tokens + 1` tokens.

Exact, whatever the draft: at temperature 0 a proposal is kept where it is the target's most likely token
and the first one that is not is replaced by that token, so the text is the target's greedy text; sampling
keeps proposal x with probability min(1, p(x) / q(x)) (p the target's and q the draft's distribution, each
shaped by the same temperature, top-k and top-p) and replaces the first rejected one by a draw from
max(0, p - q), normalised, so every token is distributed as the target alone would draw it. (At temperature
0 the target's logits for several tokens in one call may differ from one-token steps in the last bits, which
can flip a near tie.)

`speculative_steps(target, draft, prompt_ids, max_new_tokens, sampler, stop_ids, vocab_size, draft_tokens)`
yields the new ids one at a time, as `Decoder` does for a batch of one; `stats` counts rounds, proposals and
accepted proposals. Both models need the same vocabulary; they run on caches of fixed capacity.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from llama_tf.backend import inference, to_numpy
from llama_tf.generation import jit_with_weights
from llama_tf.model import call_with_cache, new_cache
from llama_tf.sampling import Sampler, is_int, ranked_probabilities

__all__ = ["speculative_steps", "scoring_step", "accept"]


_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> its compiled step, made once


def scoring_step(model: keras.Model):
    """`step(ids (1, n), cache, index) -> (logits (n, vocab) float32 NumPy, cache)`: `call_with_cache` at every
    position, compiled for the backend (a `tf.function`, a `jax.jit` per length, PyTorch eager), once a model."""
    if model not in _SCORERS:
        _SCORERS[model] = _compiled_scoring(model)
    return _SCORERS[model]


def _compiled_scoring(model: keras.Model):
    backend = keras.backend.backend()

    def score(ids, cache, index):
        return call_with_cache(model, ids, cache, index, keras.ops.zeros((1,), "int32"), every_position=True)

    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(score, reduce_retracing=True)
    elif backend == "jax":
        compiled = jit_with_weights(model, score, donated=1)
    else:
        def compiled(ids, cache, index):
            with inference():
                return score(keras.ops.convert_to_tensor(ids), cache, index)

    def step(ids, cache, index):
        logits, cache = compiled(np.asarray(ids, "int32"), cache, np.int32(index))
        return to_numpy(logits)[0], cache
    return step


def _distribution(logits: np.ndarray, sampler: Sampler) -> np.ndarray:
    "The probabilities (vocab,) a sampler draws from for one row of logits."
    order, probs = ranked_probabilities(logits[None], sampler.temperature, sampler.top_k, sampler.top_p)
    full = np.zeros(logits.shape[-1])
    full[order[0]] = probs[0]
    return full / full.sum()


def accept(target: np.ndarray, draft: np.ndarray, proposals: Sequence[int], sampler: Sampler) -> list[int]:
    """The tokens a round keeps: the proposals the target accepts, then one of its own. `target` holds its
    logits (k + 1, vocab) for the positions before each proposal and after the last, `draft` the draft's
    (k, vocab) that the proposals were drawn from."""
    kept = []
    for i, x in enumerate(proposals):
        if sampler.temperature == 0:
            best = int(np.argmax(target[i]))
            if best != x:
                return kept + [best]
        else:
            p, q = _distribution(target[i], sampler), _distribution(draft[i], sampler)
            if sampler.rng.random() * q[x] >= p[x]:          # rejected: probability 1 - min(1, p/q)
                residual = np.maximum(p - q, 0)
                return kept + [int(sampler.rng.choice(len(p), p=residual / residual.sum()))]
        kept.append(int(x))
    return kept + [int(sampler(target[-1:])[0])]


def speculative_steps(target: keras.Model, draft: keras.Model, prompt_ids: Sequence[int], max_new_tokens: int,
                      sampler: Sampler, stop_ids: Sequence[int], vocab_size: int, draft_tokens: int = 4,
                      capacity: int | None = None, stats: dict | None = None) -> Iterator[np.ndarray]:
    """The new ids of `prompt_ids` (see the module's docstring), each as a (1,) int32 array, until a stop id
    (yielded), `max_new_tokens`, or a cache of `capacity` slots (default: room for all of them) is full.
    The arguments are checked now, not when iteration starts."""
    if not is_int(draft_tokens) or draft_tokens < 1:
        raise ValueError(f"draft_tokens must be an integer >= 1, got {draft_tokens!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    capacity = capacity or len(prompt_ids) + max_new_tokens + draft_tokens
    if not 0 < len(prompt_ids) < capacity:
        raise ValueError(f"the prompt is {len(prompt_ids)} tokens; it needs at least one, and fewer than the "
                         f"context of {capacity}")
    return _rounds(target, draft, list(prompt_ids), max_new_tokens, sampler, stop_ids, vocab_size, int(draft_tokens),
                   capacity, stats if stats is not None else {})


def _rounds(target, draft, ids, max_new_tokens, sampler, stop_ids, vocab_size, draft_tokens, capacity, counts):
    score_target, score_draft = scoring_step(target), scoring_step(draft)
    target_cache, draft_cache = new_cache(target, 1, capacity), new_cache(draft, 1, capacity)
    target_len = draft_len = 0            # the ids each cache holds
    counts.update(rounds=0, proposed=0, accepted=0)
    produced = 0
    while produced < max_new_tokens and len(ids) < capacity:
        k = min(draft_tokens, capacity - len(ids) - 1, max_new_tokens - produced - 1)
        proposals, draft_logits = [], []
        if k > 0:
            logits, draft_cache = score_draft([ids[draft_len:]], draft_cache, draft_len)
            q = logits[-1, :vocab_size]
            for i in range(k):
                x = int(sampler(q[None])[0])
                proposals.append(x)
                draft_logits.append(q)
                if i < k - 1:
                    logits, draft_cache = score_draft([[x]], draft_cache, len(ids) + i)
                    q = logits[-1, :vocab_size]
            draft_len = len(ids) + k - 1
        logits, target_cache = score_target([ids[target_len:] + proposals], target_cache, target_len)
        kept = accept(logits[-(k + 1):, :vocab_size], np.asarray(draft_logits), proposals, sampler)
        counts["rounds"] += 1
        counts["proposed"] += k
        counts["accepted"] += len(kept) - 1
        target_len = len(ids) + len(kept) - 1   # the kept proposals' slots hold what they should
        draft_len = min(draft_len, target_len)
        for token in kept[: max_new_tokens - produced]:
            ids.append(token)
            produced += 1
            yield np.array([token], "int32")
            if token in stop_ids:
                return
