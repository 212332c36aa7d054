"""What per-pixel (dense) models share: their loss, their metric's name, and the layer
that aligns a U-Net's upsampled features with its skip connection.

Registered with Keras on ``import cfconv_tf``, so a saved dense model loads anywhere
the package is imported.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# The metric a dense model is judged by: the intersection over union of the predicted
# and true pixels of the classes that matter (all but class 0, the background). Pixel
# accuracy says little there: a model that marks nothing gets most pixels right.
IOU = "iou"


@keras.saving.register_keras_serializable(package="cfconv_tf")
def crossentropy_dice(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """A dense model's loss: each image's mean per-pixel cross-entropy plus the batch's
    Dice loss of the foreground (every class but 0, pooled), the usual pairing for
    segmenting thin structures.

    Cross-entropy alone is dominated by the background when the foreground is a few
    per cent of the pixels (a path is ~1 %), and a model can settle on marking
    nothing; the Dice term, ``1 - (2 |P n T| + 1) / (|P| + |T| + 1)``, does not reward
    that. It is taken over the whole batch ("batch Dice", as nnU-Net does), so a batch
    whose images have no foreground at all does not divide by zero; under a
    ``tf.distribute`` strategy that is each replica's share of the batch, as with
    BatchNorm's statistics.

    Args:
        y_true: class indices ``[B, H, W, 1]``.
        y_pred: probabilities ``[B, H, W, 1]`` (sigmoid: 2 classes) or ``[B, H, W, k]``
            (softmax).

    Returns:
        ``[B]``: each image's cross-entropy plus the batch's Dice loss (Keras averages
        it over the batch).
    """
    if y_pred.shape[-1] == 1:
        truth = tf.cast(y_true, y_pred.dtype)
        crossentropy = keras.losses.binary_crossentropy(truth, y_pred)
        foreground = y_pred
    else:
        labels = tf.cast(y_true[..., 0], tf.int32)
        crossentropy = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        foreground = y_pred[..., 1:]
        truth = tf.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)[..., 1:]
    overlap = tf.reduce_sum(foreground * truth)
    dice = 1.0 - (2.0 * overlap + 1.0) / (tf.reduce_sum(foreground) + tf.reduce_sum(truth) + 1.0)
    return tf.reduce_mean(crossentropy, axis=[1, 2]) + dice


@keras.saving.register_keras_serializable(package="cfconv_tf")
class CropToMatch(keras.layers.Layer):
    """``[tensor [B, H', W', C], reference [B, H, W, C']]`` -> ``tensor`` cropped at the
    bottom and right to ``[B, H, W, C]`` (``H <= H'``, ``W <= W'``).

    A U-Net's upsampled features are a row or column larger than the skip connection
    where "same" padding rounded an odd size up. The crop is read from the reference
    each call, so a model rebuilt at another input size (``freeze_model``'s
    ``input_size``) crops what that size needs.
    """

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        tensor, reference = inputs
        shape = keras.ops.shape(reference)
        return tensor[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        tensor, reference = input_shapes
        return (tensor[0], reference[1], reference[2], tensor[3])
