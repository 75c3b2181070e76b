"""Speculative decoding (`llm.generate(..., draft=...)`, `llama_tf.speculative`): greedy text equal to the
target's own, token for token, with a draft that agrees always and one that rarely does; sampled tokens
distributed as the target's (the rejection rule against its exact distribution)."""

import dataclasses

import keras
import numpy as np
import pytest

import llama_tf
from llama_tf.model import Llama
from llama_tf.sampling import Sampler
from llama_tf.speculative import _distribution, accept

PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo! wherefore art thou"]


@pytest.fixture(scope="module")
def target():
    return llama_tf.load()


@pytest.fixture(scope="module")
def random_draft(target):
    "A one-block random model over the same tokenizer: its proposals are rarely the target's."
    config = dataclasses.replace(target.config, dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=128)
    keras.utils.set_random_seed(3)
    return llama_tf.LLM(config, target.tokenizer, Llama(config))


@pytest.mark.parametrize("draft_kind", ["itself", "random"])
def test_greedy_text_is_the_targets_own(target, random_draft, draft_kind):
    """Both prompts' greedy text, with a draft that always agrees (every proposal kept: 5 tokens a target
    call: 5 calls for 24 tokens) and with a random one (most proposals replaced)."""
    from llama_tf.speculative import speculative_steps

    draft = target if draft_kind == "itself" else random_draft
    for prompt in PROMPTS:
        assert target.generate(prompt, 24, draft=draft, draft_tokens=4) == target.generate(prompt, 24)
    ids, stats = target.tokenizer.prompt_ids(PROMPTS[0]), {}
    steps = speculative_steps(target.model, draft.model, ids, 24, Sampler(), (), target.tokenizer.vocab_size, 4,
                              stats=stats)
    assert [int(t[0]) for t in steps] == target.generate_ids(ids, 24, stop_ids=())
    if draft_kind == "itself":
        assert stats == {"rounds": 5, "proposed": 19, "accepted": 19}
    else:
        assert stats["accepted"] < stats["proposed"] / 2


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_a_kept_or_replaced_token_is_distributed_as_the_target_draws(settings):
    """The rule alone, on fixed logits: a proposal drawn from the draft's distribution q, kept with
    probability min(1, p/q), else replaced from max(0, p - q): 30,000 rounds, each token's frequency within
    0.012 of p (4.5 standard deviations at most), and nothing outside p's support."""
    rng = np.random.default_rng(0)
    p_logits, q_logits = rng.normal(size=(2, 12)) * 2
    sampler = Sampler(seed=1, **settings)
    p, q = _distribution(p_logits, sampler), _distribution(q_logits, sampler)
    n, first = 30_000, []
    for _ in range(n):
        x = int(sampler(q_logits[None])[0])
        first.append(accept(np.stack([p_logits, p_logits]), q_logits[None], [x], sampler)[0])
    frequency = np.bincount(first, minlength=12) / n
    assert frequency[p == 0].sum() == 0
    np.testing.assert_allclose(frequency, p, atol=0.012)
    assert np.abs(q - p).max() > 0.1                                  # the draft is far from the target


def test_sampled_text_is_reproducible_for_a_seed(target, random_draft):
    first = target.generate(PROMPTS[0], 30, temperature=0.8, seed=5, draft=random_draft)
    assert first == target.generate(PROMPTS[0], 30, temperature=0.8, seed=5, draft=random_draft)
    assert first != target.generate(PROMPTS[0], 30, temperature=0.8, seed=6, draft=random_draft)


def test_bad_drafts_and_arguments_are_refused(target, random_draft, llama3_tokenizer_path):
    with pytest.raises(ValueError, match="draft must be an LLM"):
        target.generate("Hi", 5, draft="small")
    other = llama_tf.LLM(random_draft.config, llama_tf.Tokenizer(llama3_tokenizer_path), random_draft.model)
    with pytest.raises(ValueError, match="must share this model's tokenizer"):
        target.generate("Hi", 5, draft=other)
    with pytest.raises(ValueError, match="draft_tokens must be an integer >= 1"):
        target.generate("Hi", 5, draft=random_draft, draft_tokens=0)
    assert target.generate(["Hi", "Flat"], 6, draft=random_draft) == target.generate(["Hi", "Flat"], 6)
