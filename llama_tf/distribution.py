"""One model across several accelerators, through Keras' distribution API (JAX backend).

Keras places each variable by a `LayoutMap` (variable path → how each of its axes is split over a
`DeviceMesh`), and XLA's partitioner splits the computation to match, inserting the collectives. This
module says how llama_tf's variables split, in the way Megatron-LM (and keras-hub's `get_layout_map`)
split a transformer: every matrix that makes heads or hidden units from the residual stream is split by
its outputs, every one that brings them back by its inputs, so a block needs one all-reduce after
attention and one after the feed-forward and nothing between:

| variable (Keras path) | shape | split on the `model` axis |
|---|---|---|
| `…/attention/wq`, `wk`, `wv` kernels | (dim, heads × head_dim) | by output: each device holds whole heads |
| `…/attention/wo/kernel` | (heads × head_dim, dim) | by input: the same heads |
| `…/feed_forward/w1`, `w3` kernels | (dim, hidden) | by output: each device a slice of the hidden units |
| `…/feed_forward/w2/kernel` | (hidden, dim) | by input: the same slice |
| `tok_embeddings/embeddings` | (vocab, dim) | by vocabulary (also the tied output projection) |
| `output/kernel` (untied) | (dim, vocab) | by vocabulary |
| the RMSNorm weights | (dim,) | copied to every device |

    mesh = llama_tf.device_mesh(model=2)                 # 2 devices hold one copy of the weights
    llm = llama_tf.load(path, dtype="bfloat16", mesh=mesh)   # each tensor goes from the file to its shards

or, for a model built some other way, `with llama_tf.model_parallel(mesh, config).scope(): ...`.

`data_parallel()` is the other way, for training: every device holds all the weights and takes its
share of each batch (`python -m llama_tf.train fit --data-parallel`). A `(batch, model)` mesh does both.
"""

from __future__ import annotations

import keras

from llama_tf.config import LlamaConfig
from llama_tf.structure import BLOCK_PROJECTIONS, SPLIT_INPUTS

__all__ = ["BATCH_AXIS", "MODEL_AXIS", "device_mesh", "layout_map", "model_parallel", "data_parallel"]

BATCH_AXIS, MODEL_AXIS = "batch", "model"

# Variable paths (regular expressions matching the whole path) -> the mesh axis of each of the variable's axes.
# A projection's kernel is (in, out): Meta's column-parallel projections split their outputs, the
# row-parallel ones (`structure.SPLIT_INPUTS`) their inputs; the embedding splits its vocabulary.
LAYOUT = {
    **{rf".*/{sub}/{proj}/kernel": (MODEL_AXIS, None) if f"{sub}.{proj}" in SPLIT_INPUTS else (None, MODEL_AXIS)
       for sub, projections in BLOCK_PROJECTIONS.items() for proj in projections},
    r"tok_embeddings/embeddings": (MODEL_AXIS, None),
    r"output/kernel": (None, MODEL_AXIS),
}


def _require_jax() -> None:
    if keras.backend.backend() != "jax":
        raise ValueError("llama_tf distributes models with Keras' distribution API, which runs on the JAX "
                         f"backend; set KERAS_BACKEND=jax before importing Keras (now {keras.backend.backend()!r})")


def device_mesh(model: int | None = None, devices: list | None = None) -> keras.distribution.DeviceMesh:
    """A (`batch`, `model`) mesh over `devices` (default: every device Keras sees): groups of `model`
    devices (default: all of them) each hold one copy of the weights, split between them; the groups take
    different rows of a batch."""
    _require_jax()
    devices = list(devices or keras.distribution.list_devices())
    model = len(devices) if model is None else model
    if isinstance(model, bool) or not isinstance(model, int) or model < 1 or len(devices) % model:
        raise ValueError(f"model must be a whole divisor of the {len(devices)} devices, got {model!r}")
    return keras.distribution.DeviceMesh((len(devices) // model, model), [BATCH_AXIS, MODEL_AXIS], devices)


def layout_map(mesh: keras.distribution.DeviceMesh, config: LlamaConfig | None = None) -> keras.distribution.LayoutMap:
    """The `LayoutMap` of the table above. With `config`, first checks that every split axis divides
    evenly by the mesh's `model` size (whole heads per device, the grouped key/value heads included)."""
    size = mesh.shape[mesh.axis_names.index(MODEL_AXIS)]
    if config is not None:
        sizes = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "hidden_dim": config.hidden_dim,
                 "vocab_size": config.vocab_size}
        uneven = [f"{name} {value}" for name, value in sizes.items() if value % size]
        if uneven:
            raise ValueError(f"cannot split this model over {size} devices: {', '.join(uneven)} "
                             f"{'is' if len(uneven) == 1 else 'are'} not divisible by {size}")
    layouts = keras.distribution.LayoutMap(mesh)
    for pattern, axes in LAYOUT.items():
        layouts[pattern] = axes
    return layouts


def model_parallel(mesh: keras.distribution.DeviceMesh | None = None,
                   config: LlamaConfig | None = None) -> keras.distribution.ModelParallel:
    """Keras' `ModelParallel` with llama_tf's layout over `mesh` (default: every device, one copy of the
    weights): variables created inside its `scope()` are split (`llama_tf.load(..., mesh=)` does this)."""
    _require_jax()
    mesh = mesh or device_mesh()
    return keras.distribution.ModelParallel(layout_map=layout_map(mesh, config), batch_dim_name=BATCH_AXIS)


def data_parallel(devices: list | None = None) -> keras.distribution.DataParallel:
    "Keras' `DataParallel` over `devices` (default: all): a copy of the weights on each, the batch split between them."
    _require_jax()
    return keras.distribution.DataParallel(devices=devices)


def place(value, layout=None):
    """`value` where a variable initializer that Keras passed `layout` must put it: split over the mesh's
    devices by the layout's sharding (from host memory straight to the shards), or as it is without one."""
    if layout is None:
        return value
    import jax

    return jax.device_put(value, layout.spec)
