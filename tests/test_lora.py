"""LoRA adapters (`llama_tf.lora`) against `peft` on the same weights: logits with adapters, an adapter saved
here read by peft, one saved by peft read here, merging, and what `enable_lora` leaves trainable."""

import json

import numpy as np
import pytest

import llama_tf
from llama_tf import CheckpointError
from llama_tf.lora import TARGETS, adapters
from conftest import require
from reference import hf_model, max_relative_error, write_hf

SHAPE = dict(num_key_value_heads=2)          # grouped-query attention: q and k rows permute differently
IDS = np.array([[1, 17, 250, 33, 9, 120, 64, 7, 301, 45]])


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(**SHAPE)
    return model, write_hf(model, tmp_path_factory.mktemp("lora") / "base", tiny_tokenizer_proto)


def peft_model(model, path=None, rank=4, alpha=8, rslora=False):
    "peft on the base model: the adapter at `path`, or a new one with random A and B (peft's own draw)."
    peft = require("peft")
    torch = require("torch")
    if path is not None:
        return peft.PeftModel.from_pretrained(model, str(path)).eval()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=[hf for _, hf, _ in TARGETS.values()],
                             init_lora_weights=False, use_rslora=rslora)
    torch.manual_seed(1)
    return peft.get_peft_model(model, config).eval()


def logits_of(torch_model):
    torch = require("torch")
    with torch.no_grad():
        return torch_model(torch.tensor(IDS)).logits.numpy()


def randomised(llm, seed=0):
    "Random values in every adapter (B starts at zero, which would hide any error in it)."
    rng = np.random.default_rng(seed)
    for adapter in adapters(llm.model).values():
        adapter.lora_a.assign(rng.normal(0, 0.2, adapter.lora_a.shape).astype("float32"))
        adapter.lora_b.assign(rng.normal(0, 0.2, adapter.lora_b.shape).astype("float32"))
    return llm


def test_enable_lora_trains_only_the_adapters_and_starts_where_the_model_was(base):
    llm = llama_tf.load(base[1])
    before = np.asarray(llm.model(IDS))
    llm.enable_lora(rank=4, alpha=8)
    n_layers = llm.config.n_layers
    assert len(llm.model.trainable_weights) == 2 * len(TARGETS) * n_layers
    assert all("lora" in v.path for v in llm.model.trainable_weights)
    np.testing.assert_array_equal(np.asarray(llm.model(IDS)), before)          # B = 0
    llm.disable_lora()
    assert len(llm.model.trainable_weights) == len(llm.model.weights) and not adapters(llm.model)


def test_an_adapter_saved_here_gives_peft_the_same_logits(base, tmp_path):
    model, directory = base
    llm = randomised(llama_tf.load(directory).enable_lora(rank=4, alpha=8))
    ours = np.asarray(llm.model(IDS))
    llm.save_adapter(tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert settings["peft_type"] == "LORA" and settings["r"] == 4 and settings["lora_alpha"] == 8
    theirs = logits_of(peft_model(hf_model(**SHAPE), tmp_path / "adapter"))
    assert max_relative_error(ours, theirs) <= 1e-4
    assert max_relative_error(ours, logits_of(model)) > 1e-2          # the adapter changes the logits


@pytest.mark.parametrize("rslora", [False, True])
def test_an_adapter_peft_saved_gives_the_same_logits_here(base, tmp_path, rslora):
    theirs_model = peft_model(hf_model(**SHAPE), rank=4, alpha=8, rslora=rslora)
    theirs_model.save_pretrained(tmp_path / "adapter")
    llm = llama_tf.load(base[1]).load_adapter(tmp_path / "adapter")
    assert max_relative_error(np.asarray(llm.model(IDS)), logits_of(theirs_model)) <= 1e-4


def test_merged_equals_unmerged(base):
    llm = randomised(llama_tf.load(base[1]).enable_lora(rank=4, alpha=8))
    unmerged = np.asarray(llm.model(IDS))
    llm.merge_adapter()
    assert not adapters(llm.model)
    assert max_relative_error(np.asarray(llm.model(IDS)), unmerged) <= 1e-5
    assert llm.generate("ab", 4) == llm.generate("ab", 4)


def test_generation_uses_the_adapters(base):
    llm = llama_tf.load(base[1])
    plain = llm.generate_ids([1, 17, 250], 8, stop_ids=())
    randomised(llm.enable_lora(rank=4, alpha=8), seed=3)
    assert llm.generate_ids([1, 17, 250], 8, stop_ids=()) != plain


@pytest.mark.parametrize("settings, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(alpha=float("nan")), "alpha must be a positive number"),
    (dict(targets=("q_proj",)), "targets must be some of wq, wk, wv, wo, w1, w2, w3"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
])
def test_bad_settings_are_named(base, settings, message):
    with pytest.raises(ValueError, match=message):
        llama_tf.load(base[1]).enable_lora(**settings)


def test_an_adapter_this_model_cannot_take_is_named(base, tmp_path):
    llm = randomised(llama_tf.load(base[1]).enable_lora(rank=4, alpha=8, targets=("wq",)))
    folder = llm.save_adapter(tmp_path / "adapter")
    settings = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**settings, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora = True is not supported"):
        llm.load_adapter(folder)
    (folder / "adapter_config.json").write_text(json.dumps({**settings, "r": 8}))
    with pytest.raises(CheckpointError, match="this model needs"):
        llm.load_adapter(folder)


def gradients(model, loss_of) -> dict[int, np.ndarray]:
    "d loss_of(logits) / d each trainable variable, by the backend's own autodiff, by the variable's id."
    import keras

    variables, frozen = model.trainable_weights, model.non_trainable_weights
    if keras.backend.backend() == "tensorflow":
        tf = require("tensorflow")
        with tf.GradientTape() as tape:
            loss = loss_of(model(IDS))
        grads = tape.gradient(loss, variables)
    elif keras.backend.backend() == "jax":
        import jax

        grads = jax.grad(lambda values: loss_of(model.stateless_call(values, [v.value for v in frozen], IDS)[0]))(
            [v.value for v in variables])
    else:   # PyTorch: the variables are parameters that collect .grad
        loss_of(model(IDS)).backward()
        grads = [v.value.grad for v in variables]
    return {id(v): np.asarray(keras.ops.convert_to_numpy(g)) for v, g in zip(variables, grads)}


@pytest.mark.training
def test_one_step_of_gradients_equals_peft(base, tmp_path):
    "The next-token loss's gradients with respect to every A and B, here and in peft (q/k rows permuted)."
    torch = require("torch")
    import keras

    from llama_tf.formats.hf import permute_rope_rows

    llm = randomised(llama_tf.load(base[1]).enable_lora(rank=4, alpha=8))
    llm.save_adapter(tmp_path / "adapter")
    theirs = peft_model(hf_model(**SHAPE), tmp_path / "adapter")
    for name, p in theirs.named_parameters():
        p.requires_grad_("lora_" in name)
    ids = torch.tensor(IDS)
    theirs(ids, labels=ids).loss.backward()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = gradients(llm.model, lambda logits: loss_fn(IDS[:, 1:], logits[:, :-1]))
    params = dict(theirs.named_parameters())
    heads = {"wq": llm.config.n_heads, "wk": llm.config.n_kv_heads}
    for (i, target), adapter in adapters(llm.model).items():
        _, hf, group = TARGETS[target]
        for matrix, variable in (("A", adapter.lora_a), ("B", adapter.lora_b)):
            ours = grads[id(variable)]
            if matrix == "B" and target in heads:
                ours = permute_rope_rows(ours, heads[target])
            reference = params[f"base_model.model.model.layers.{i}.{group}.{hf}.lora_{matrix}.default.weight"].grad
            assert max_relative_error(ours, reference.numpy()) <= 1e-4, (i, target, matrix)


@pytest.mark.training
def test_fit_trains_the_adapters_and_leaves_the_base(base):
    import keras

    llm = llama_tf.load(base[1]).enable_lora(rank=4, alpha=8)
    frozen = {v.path: np.asarray(v) for v in llm.model.weights if "lora" not in v.path}
    llm.model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = llm.model.fit(np.repeat(IDS[:, :-1], 4, 0), np.repeat(IDS[:, 1:], 4, 0), epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    assert all(np.array_equal(np.asarray(v), frozen[v.path]) for v in llm.model.weights if "lora" not in v.path)


@pytest.mark.training
@pytest.mark.parametrize("dtype", ["q8_0", "bfloat16"])
def test_float32_adapters_train_on_a_q8_0_or_bfloat16_base(tmp_path, tiny_tokenizer_proto, dtype):
    """QLoRA's idea with llama.cpp's 8 bits (the base's products dequantise Q8_0 blocks), and a bfloat16 base:
    the adapters are float32, as PEFT keeps them, and gradients reach them through the base."""
    import keras

    directory = write_hf(hf_model(num_key_value_heads=2, intermediate_size=192), tmp_path / "hf", tiny_tokenizer_proto)
    llm = llama_tf.load(directory, dtype=dtype).enable_lora(rank=4, alpha=8)
    assert {keras.backend.standardize_dtype(v.dtype) for v in llm.model.trainable_weights} == {"float32"}
    llm.model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = llm.model.fit(np.repeat(IDS[:, :-1], 4, 0), np.repeat(IDS[:, 1:], 4, 0), epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    if dtype == "q8_0":
        with pytest.raises(ValueError, match="merging an adapter into Q8_0 weights would round it away"):
            llm.merge_adapter()
