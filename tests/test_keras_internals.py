"""The private Keras API behind `llama_tf.keras_internals`, each piece doing what llama_tf relies on. A Keras
upgrade that moves or changes one fails here, by name, before it fails anywhere else."""

import keras
import numpy as np
import pytest

from llama_tf.keras_internals import forget_pending_variables, pending_variables, set_initializer, sublayers, unlocked


class Outer(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(3, name="inner")

    def call(self, x):
        return self.inner(x)


def test_sublayers_reach_nested_layers():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Outer(name="outer")(inputs))
    names = [layer.name for layer in sublayers(model)]
    assert "outer" in names and "inner" in names        # model.layers has only the top level
    assert "inner" not in [layer.name for layer in model.layers]


def test_unlocked_lets_a_built_layer_take_a_new_variable():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    with pytest.raises(ValueError):                    # what the tracker refuses outside `unlocked`
        layer.extra = layer.add_weight(shape=(2,), name="extra")
    with unlocked(layer):
        layer.extra = layer.add_weight(shape=(2,), name="extra", initializer="ones")
    assert any(v is layer.extra for v in layer.weights)
    with pytest.raises(ValueError):                    # locked again afterwards
        layer.more = layer.add_weight(shape=(2,), name="more")


def test_pending_variables_take_their_initializer_when_the_stateless_scope_exits():
    value = np.arange(6, dtype="float32").reshape(2, 3)
    with keras.StatelessScope():
        variable = keras.Variable(initializer="zeros", shape=(2, 3), dtype="float32")
        assert any(v is variable for v in pending_variables())
        set_initializer(variable, lambda shape, dtype: value)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    assert not pending_variables()


def test_forget_pending_variables_empties_the_list():
    try:
        with keras.StatelessScope():
            keras.Variable(initializer="zeros", shape=(2,), dtype="float32")
            forget_pending_variables()
            assert not pending_variables()
    finally:
        forget_pending_variables()
