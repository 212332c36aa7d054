"""A user's own Keras classes for the export zoo, registered as users register theirs.

The zoo's fresh export process loads models that use them through ``--import
zoo_layers`` (:func:`cfconv_tf.cli.import_modules`), as a user's CLI call would.
"""

from __future__ import annotations

import keras

from cfconv_tf import CFConv2D


@keras.saving.register_keras_serializable(package="zoo")
class SpectralBlock(keras.layers.Layer):
    """``LayerNorm(x + CF(x))``: a user's residual block that creates its CF layer itself."""

    def __init__(self, filters: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.spectral = CFConv2D(
            filters,
            samples=0.25,
            generator="factorized",
            generator_rank=4,
            hidden_units=(8,),
            kernel_scale="auto",
            activation="relu",
        )
        self.norm = keras.layers.LayerNormalization()

    def call(self, inputs, training=None):
        return self.norm(inputs + self.spectral(inputs, training=training))

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters}
