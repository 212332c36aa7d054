"""The configured networks, each in a CF-Conv variant and a spatial-conv baseline.

Two families (``ModelConfig.architecture``):

- ``"paper"``: the paper's CNN (Fig. 3), a stack of stride-1 convolutions at the input's
  resolution; ``"cf"`` makes every convolution a CF-Conv.
- ``"resnet"``: a ResNet-style CNN (3x3 convolutions, BatchNorm, ReLU, stride-2
  stages), residual or its plain twin; ``"spatial"`` is that ordinary CNN, ``"cf"`` the
  same CNN with CF-Convs in the blocks of ``spectral_stages``, replacing the block's
  second 3x3 convolution or added to it as a global branch (the Fast Fourier
  Convolution design, Chi et al. 2020, at the stage's reduced resolution).

Either family classifies whole images, or with ``dense`` labels every pixel (the paper's
stack keeps the input's resolution; the ResNet gets a U-Net decoder).
"""

from __future__ import annotations

import keras
import numpy as np

from cfconv_tf.config import (
    CF_LAYER_FIELDS,
    LAYER_NORMALIZATION,
    RESNET,
    SEPARABLE,
    SPECTRAL_ADD,
    ModelConfig,
)
from cfconv_tf.dense import CropToMatch
from cfconv_tf.layers import CFConv2D

VARIANTS = ("cf", "spatial")


def build_model(
    config: ModelConfig,
    variant: str,
    input_shape: tuple[int, int, int],
    classes: int,
    seed: int | None = None,
    dense: bool = False,
) -> keras.Model:
    """Build the network ``config.architecture`` names: the paper's stack
    (:func:`_paper_body`) or a ResNet-style downsampling CNN (:func:`_resnet_body`).

    Input: raw pixel values ``[B, H, W, C]`` float32 in [0, 255] (scaled to [0, 1]
    inside the model, so exported models take pixels as they are). Output:
    probabilities ``[B, 1]`` (sigmoid) when ``classes == 2``, else ``[B, classes]``
    (softmax). With ``dense`` the model labels every pixel: ``[B, H, W, 1]`` or
    ``[B, H, W, classes]``; the head's ``dense_units`` act per pixel, and the ResNet's
    features are brought back to the input's resolution by a U-Net decoder
    (:func:`_unet_decoder`).

    Raises:
        ValueError: an unknown variant, fewer than 2 classes, or the CF-Conv variant of a
            ResNet configuration without ``spectral_stages`` (it would have no CF-Conv).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {VARIANTS}")
    if classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {classes}")
    if variant == "cf" and config.architecture == RESNET and not config.spectral_stages:
        raise ValueError(
            f"{config.name}: the cf variant of a resnet configuration needs spectral_stages "
            f"(the stages whose blocks get a CF-Conv); without them use --model spatial"
        )
    inputs = keras.Input(shape=input_shape, name="image")
    pixels = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if config.architecture == RESNET:
        stages = _resnet_body(config, variant, pixels, seed)
        hidden = _unet_decoder(config, pixels, stages) if dense else stages[-1]
    else:
        hidden = _paper_body(config, variant, pixels, seed)
    if not dense:
        hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    for index, units in enumerate(config.dense_units):
        hidden = keras.layers.Dense(units, activation="relu", name=f"dense_{index}")(hidden)
    if classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities")(hidden)
    else:
        outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(hidden)
    return keras.Model(inputs, outputs, name=f"{config.name}_{variant}")


def cf_layer(
    config: ModelConfig, filters: int, activation, seed: int | None, name: str
) -> CFConv2D:
    """A CF-Conv layer of ``filters`` outputs with the configuration's layer settings."""
    settings = {field: getattr(config, field) for field in CF_LAYER_FIELDS}
    return CFConv2D(filters, activation=activation, seed=seed, name=name, **settings)


def _paper_body(
    config: ModelConfig, variant: str, hidden: keras.KerasTensor, seed: int | None
) -> keras.KerasTensor:
    """The paper's convolution stack: ``[B, H, W, C]`` -> ``[B, H, W, filters]``.

    Args:
        variant: ``"cf"`` for CF-Conv layers, ``"spatial"`` for convolutions of
            ``config.spatial_kernel_size`` with "same" padding: ``Conv2D``, or
            ``SeparableConv2D`` (depthwise, then pointwise) when ``config.spatial_kind``
            is ``"separable"``.

    Each convolution is followed by its ReLU; with ``config.normalization`` ``"layer"``,
    by ``GroupNormalization`` with one group (``norm_<i>``: per image, over height, width
    and channels), then the ReLU (``relu_<i>``).
    """
    normalized = config.normalization == LAYER_NORMALIZATION
    activation = None if normalized else "relu"
    for index in range(config.conv_layers):
        if variant == "cf":
            layer = cf_layer(
                config,
                config.filters,
                activation=activation,
                seed=None if seed is None else seed + index,
                name=f"cfconv_{index}",
            )
        else:
            convolution = (
                keras.layers.SeparableConv2D
                if config.spatial_kind == SEPARABLE
                else keras.layers.Conv2D
            )
            layer = convolution(
                config.filters,
                config.spatial_kernel_size,
                padding="same",
                activation=activation,
                name=f"conv_{index}",
            )
        hidden = layer(hidden)
        if normalized:
            hidden = keras.layers.GroupNormalization(groups=1, name=f"norm_{index}")(hidden)
            hidden = keras.layers.ReLU(name=f"relu_{index}")(hidden)
    return hidden


def _resnet_body(
    config: ModelConfig, variant: str, hidden: keras.KerasTensor, seed: int | None
) -> list[keras.KerasTensor]:
    """Stem and stages: ``[B, H, W, C]`` -> every stage's output, the last
    ``[B, H / 2^(S-1), W / 2^(S-1), last width]``.

    A 3x3 stem of ``stage_filters[0]`` at ``config.stem_stride`` (2 divides the sizes
    above by a further 2), then ``blocks_per_stage`` basic blocks per stage, the first
    block of every stage after the first at stride 2 ("same" padding, so odd sizes
    round up). Every BatchNorm uses ``config.batchnorm_momentum``.
    """
    hidden = _conv_bn(hidden, config.stage_filters[0], config.stem_stride, "stem", config)
    hidden = keras.layers.ReLU(name="stem_relu")(hidden)
    stages = []
    for stage, width in enumerate(config.stage_filters):
        spectral = variant == "cf" and stage in config.spectral_stages
        for block in range(config.blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage}_block{block}"
            cf_seed = None if seed is None else seed + 100 * stage + block
            hidden = _basic_block(config, hidden, width, stride, spectral, cf_seed, name)
        stages.append(hidden)
    return stages


def _unet_decoder(
    config: ModelConfig, pixels: keras.KerasTensor, stages: list[keras.KerasTensor]
) -> keras.KerasTensor:
    """The U-Net decoder of a dense ResNet: the last stage's features ``[B, h, w, C]``
    -> ``[B, H, W, stage_filters[0]]`` at the input's resolution.

    From the deepest stage up, the features are upsampled (bilinear, by the stride
    between the two resolutions, then cropped at the bottom and right where "same"
    padding rounded an odd size up: :class:`~cfconv_tf.dense.CropToMatch`) to the next
    shallower stage's resolution,
    concatenated with that stage's output (with the scaled input image at full
    resolution, where the stem downsampled) and mixed by a 3x3 convolution, BatchNorm
    and ReLU of that stage's width. Upsampling by whole factors keeps the exported
    graph's Resize exact (ONNX rounds the output size of a fractional scale down).
    """
    strides = [1] + [config.stem_stride * 2**stage for stage in range(len(stages))]
    skips: list[tuple[keras.KerasTensor, int]] = []
    for tensor, stride in zip((pixels, *stages[:-1]), strides[:-1], strict=True):
        if skips and skips[-1][1] == stride:
            skips[-1] = (tensor, stride)  # a deeper tensor at the same resolution
        else:
            skips.append((tensor, stride))
    hidden, stride = stages[-1], strides[-1]
    for level, (skip, skip_stride) in reversed(list(enumerate(skips))):
        factor = stride // skip_stride
        if factor > 1:
            hidden = keras.layers.UpSampling2D(
                factor, interpolation="bilinear", name=f"decoder{level}_upsample"
            )(hidden)
            hidden = CropToMatch(name=f"decoder{level}_crop")([hidden, skip])
        hidden = keras.layers.Concatenate(name=f"decoder{level}_concat")([hidden, skip])
        filters = config.stage_filters[0] if skip is pixels else skip.shape[-1]
        hidden = _conv_bn(hidden, filters, 1, f"decoder{level}_conv", config)
        hidden = keras.layers.ReLU(name=f"decoder{level}_relu")(hidden)
        stride = skip_stride
    return hidden


def _basic_block(
    config: ModelConfig,
    inputs: keras.KerasTensor,
    width: int,
    stride: int,
    spectral: bool,
    seed: int | None,
    name: str,
) -> keras.KerasTensor:
    """conv-BN-ReLU, conv-BN, (+ shortcut), ReLU: ``[B, H, W, C]`` ->
    ``[B, H / stride, W / stride, width]``.

    With ``spectral``, the second convolution is a CF-Conv (``spectral_mode``
    ``"replace"``) or a 3x3 convolution plus a batch-normalized CF-Conv of the same input
    (``"add"``). The shortcut is the identity, or a 1x1 convolution with BatchNorm where
    the shape changes; the plain twin (``residual: false``) has none.
    """
    hidden = _conv_bn(inputs, width, stride, f"{name}_conv0", config)
    hidden = keras.layers.ReLU(name=f"{name}_relu0")(hidden)
    if spectral:
        branch = cf_layer(config, width, None, seed, f"{name}_cfconv")(hidden)
        branch = keras.layers.BatchNormalization(
            momentum=config.batchnorm_momentum, name=f"{name}_cfconv_bn"
        )(branch)
        if config.spectral_mode == SPECTRAL_ADD:
            local = _conv_bn(hidden, width, 1, f"{name}_conv1", config)
            branch = keras.layers.Add(name=f"{name}_local_global")([local, branch])
        hidden = branch
    else:
        hidden = _conv_bn(hidden, width, 1, f"{name}_conv1", config)
    if config.residual:
        shortcut = inputs
        if stride != 1 or inputs.shape[-1] != width:
            shortcut = _conv_bn(inputs, width, stride, f"{name}_shortcut", config, kernel_size=1)
        hidden = keras.layers.Add(name=f"{name}_add")([hidden, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu1")(hidden)


def _conv_bn(
    inputs: keras.KerasTensor,
    width: int,
    stride: int,
    name: str,
    config: ModelConfig,
    kernel_size: int = 3,
) -> keras.KerasTensor:
    """A bias-free convolution followed by BatchNorm (``name``, ``name_bn``) of
    ``config.batchnorm_momentum``."""
    hidden = keras.layers.Conv2D(
        width,
        kernel_size,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(inputs)
    return keras.layers.BatchNormalization(momentum=config.batchnorm_momentum, name=f"{name}_bn")(
        hidden
    )


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Trainable and non-trainable (spectral state, BatchNorm statistics) parameter counts."""
    return {
        "trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "non_trainable": sum(int(np.prod(w.shape)) for w in model.non_trainable_weights),
    }
