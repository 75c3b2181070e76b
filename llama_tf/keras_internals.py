"""The private Keras API llama_tf cannot do without, in one place: each use has a name here, and
`tests/test_keras_internals.py` fails loudly when a Keras upgrade moves one.

- `sublayers`: every layer inside a model, nested ones included (`Layer._flatten_layers`); Keras'
  public `Model.layers` lists only the top level, not a block's projections.
- `unlocked`: a built layer takes new variables only with its tracker unlocked (`Layer._tracker`), as
  Keras' own `Dense.quantize` does when it swaps its kernel for quantised variables.
- `pending_variables`, `forget_pending_variables` and `set_initializer`: the variables that
  `keras.StatelessScope` leaves uninitialised (a global list Keras initialises, in order, when the scope
  exits), and the initializer Keras calls for each: how `build_model` reads every weight straight from
  its file, largest first, with no random initialisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import keras
from keras.src.backend.common import global_state

__all__ = ["sublayers", "unlocked", "pending_variables", "forget_pending_variables", "set_initializer"]

_PENDING = "uninitialized_variables"


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    "Every layer inside `layer`, at any depth, without `layer` itself."
    return list(layer._flatten_layers(include_self=False))


@contextlib.contextmanager
def unlocked(layer: keras.layers.Layer) -> Iterator[None]:
    "Inside, the built `layer` accepts new variables."
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def pending_variables() -> list:
    """The variables created inside a `keras.StatelessScope` and not yet initialised: Keras initialises them
    in this list's order when the scope exits (the list itself: sort or filter it in place)."""
    return global_state.get_global_attribute(_PENDING)


def forget_pending_variables() -> None:
    "Drop the variables a failed `StatelessScope` left pending (Keras would initialise them at the next exit)."
    global_state.set_global_attribute(_PENDING, [])


def set_initializer(variable, initializer: Callable) -> None:
    "The function Keras calls, `initializer(shape, dtype)` (plus `layout` under a distribution), to give a pending variable its value."
    variable._initializer = initializer
