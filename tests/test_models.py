"""The configured networks (the paper's and the ResNet family) and configuration errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cfconv_tf.config import MODELS_DIR, ModelConfig, load_model_config
from cfconv_tf.layers import CFConv2D
from cfconv_tf.models import build_model, parameter_counts


def test_paper_configuration_has_the_papers_parameter_counts():
    config = load_model_config("paper_cnn")
    assert (config.conv_layers, config.filters, config.input_size, config.samples) == (
        6,
        32,
        (150, 150),
        2**18,
    )
    counts = {
        variant: parameter_counts(build_model(config, variant, (150, 150, 3), 2))
        for variant in ("cf", "spatial")
    }
    # Paper, Table 1: 59K (CF-Conv) and 60K (3x3 CNN) trainable parameters.
    assert 55_000 <= counts["cf"]["trainable"] <= 61_000
    assert 59_000 <= counts["spatial"]["trainable"] <= 61_000
    # The spectral state (real and imaginary), plus per CF layer one generator scale
    # and the sampler's (seed, step) pair.
    assert counts["cf"]["non_trainable"] == 2 * 150 * 76 * (3 * 32 + 5 * 32 * 32) + 6 * 3
    assert counts["spatial"]["non_trainable"] == 0


@pytest.mark.parametrize("classes,width", [(2, 1), (10, 10)])
def test_head_matches_class_count(tiny_config, classes, width, rng):
    model = build_model(tiny_config, "cf", (12, 10, 1), classes)
    cf_layers = [layer for layer in model.layers if isinstance(layer, CFConv2D)]
    assert len(cf_layers) == tiny_config.conv_layers
    probabilities = model(rng.uniform(0, 255, (3, 12, 10, 1)).astype(np.float32)).numpy()
    assert probabilities.shape == (3, width)
    if classes > 2:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_spatial_variant_uses_conv2d_with_configured_kernel(tiny_config):
    model = build_model(tiny_config.replace(spatial_kernel_size=5), "spatial", (12, 12, 3), 4)
    convs = [layer for layer in model.layers if layer.name.startswith("conv_")]
    assert [layer.kernel_size for layer in convs] == [(5, 5)] * tiny_config.conv_layers


def test_separable_spatial_variant_is_depthwise_then_pointwise(tiny_config, rng):
    config = tiny_config.replace(spatial_kernel_size=7, spatial_kind="separable")
    model = build_model(config, "spatial", (9, 12, 1), 2)
    convs = [layer for layer in model.layers if layer.name.startswith("conv_")]
    assert all(isinstance(layer, keras.layers.SeparableConv2D) for layer in convs)
    assert [layer.kernel_size for layer in convs] == [(7, 7)] * tiny_config.conv_layers
    assert model(rng.uniform(0, 255, (2, 9, 12, 1)).astype(np.float32)).shape == (2, 1)


def test_pathfinder_baselines_match_the_cf_model_in_trainable_parameters():
    def trainable(name: str, variant: str) -> int:
        model = build_model(load_model_config(name), variant, (32, 32, 1), 2)
        return parameter_counts(model)["trainable"]

    for suffix in ("", "_norm"):
        cf = trainable(f"pathfinder_cf{suffix}", "cf")
        for baseline in ("pathfinder_cnn_wide", "pathfinder_large_kernel"):
            name = baseline + suffix
            assert trainable(name, "spatial") == pytest.approx(cf, rel=0.01), name
        # the paper's 3x3 CNN (with the same normalization for "_norm")
        assert trainable(f"pathfinder_cf{suffix}", "spatial") < cf / 4


@pytest.mark.parametrize("variant", ["cf", "spatial"])
def test_layer_normalization_standardizes_each_image_before_the_relu(tiny_config, variant, rng):
    model = build_model(tiny_config.replace(normalization="layer"), variant, (9, 12, 1), 3)
    prefix = "cfconv_" if variant == "cf" else "conv_"
    for index in range(tiny_config.conv_layers):
        conv, norm, relu = (
            model.get_layer(f"{name}{index}") for name in (prefix, "norm_", "relu_")
        )
        assert conv.activation is keras.activations.linear  # the ReLU comes after the norm
        assert isinstance(norm, keras.layers.GroupNormalization) and norm.groups == 1
        assert norm.input is conv.output and relu.input is norm.output
    images = rng.uniform(0, 255, (4, 9, 12, 1)).astype(np.float32)
    images[0] *= 0.1  # a faint image
    first = model.get_layer("norm_0")
    before, normalized = (
        array.numpy() for array in keras.Model(model.input, [first.input, first.output])(images)
    )
    variance = before.var(axis=(1, 2, 3))
    np.testing.assert_allclose(normalized.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(  # unit variance, up to the layer's epsilon
        normalized.std(axis=(1, 2, 3)), np.sqrt(variance / (variance + first.epsilon)), rtol=1e-3
    )
    # one group over the channels: each channel keeps its own mean
    assert np.abs(normalized.mean(axis=(1, 2))).max() > 0.1
    # per image, in training too (unlike batch statistics): an image's output does not
    # depend on the rest of its batch
    np.testing.assert_allclose(
        first(before[:1], training=True).numpy(),
        first(before, training=True).numpy()[:1],
        atol=1e-6,
    )


def test_base_configuration_is_inherited_and_overridden(tmp_path):
    own = tmp_path / "mine" / "derived.yaml"
    own.parent.mkdir()
    (tmp_path / "parent.yaml").write_text("base: pathfinder_cf\nfilters: 8\ndescription: x\n")
    own.write_text("base: ../parent.yaml\nnormalization: layer\n")
    config = load_model_config(own)
    reference = load_model_config("pathfinder_cf")
    assert (config.name, config.description) == ("derived", "")
    assert (config.filters, config.normalization) == (8, "layer")
    assert (
        config.replace(
            name="pathfinder_cf",
            description=reference.description,
            filters=reference.filters,
            normalization="none",
        )
        == reference
    )
    (tmp_path / "parent.yaml").write_text("base: mine/derived.yaml\n")
    with pytest.raises(ValueError, match="form a cycle"):
        load_model_config(own)
    own.write_text("base: no_such_model\n")
    with pytest.raises(FileNotFoundError, match="'no_such_model' \\(the base of .*derived.yaml"):
        load_model_config(own)
    own.write_text("base: ../parent\n")  # a path, even without a suffix
    with pytest.raises(FileNotFoundError, match="as a path"):
        load_model_config(own)
    own.write_text("base:\n")
    with pytest.raises(ValueError, match="base must be a configuration name or path"):
        load_model_config(own)


def test_bad_model_requests_are_rejected(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="unknown model variant"):
        build_model(tiny_config, "transformer", (8, 8, 1), 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(tiny_config, "cf", (8, 8, 1), 1)
    with pytest.raises(FileNotFoundError, match="paper_cnn"):
        load_model_config("no_such_model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("conv_layers: 2\nfliters: 8\n")
    with pytest.raises(ValueError, match="unknown settings \\['fliters'\\]"):
        load_model_config(bad)
    bad.write_text("conv_layers: 0\n")
    with pytest.raises(ValueError, match="conv_layers must be a positive integer"):
        load_model_config(bad)
    with pytest.raises(ValueError, match="samples"):
        ModelConfig(name="x", samples=-1)
    for line, message in [
        ("state_initializer: ones", "state_initializer must be one of"),
        ("recompute_generators: 1", "recompute_generators must be true or false"),
        ("kernel_scale: -2", "bad: kernel_scale must be a positive number or 'auto'"),
        ("kernel_scale: big", "kernel_scale must be a positive number or 'auto'"),
        ("fourier_bands: 1.5", "bad: fourier_bands must be an integer >= 0"),
        ("fourier_bands: -1", "fourier_bands must be an integer >= 0"),
        ("generator_initializer: ones", "bad: hidden_initializer must be one of"),
        ("generator: mlp", "bad: generator must be one of"),
        ("generator_rank: 0", "bad: generator_rank must be a positive integer"),
        ("generator_rank: 2.5", "generator_rank must be a positive integer"),
        ("spatial_kind: dilated", "bad: spatial_kind must be one of"),
        ("normalization: batch", "bad: normalization must be one of"),
        ("architecture: vit", "bad: architecture must be one of"),
        ("spectral_mode: multiply", "bad: spectral_mode must be one of"),
        ("stage_filters: []", "stage_filters must be positive integers"),
        ("stage_filters: [8, 0]", "stage_filters must be positive integers"),
        ("blocks_per_stage: 0", "blocks_per_stage must be a positive integer"),
        ("residual: 1", "residual must be true or false"),
        ("spectral_stages: [0]", "spectral_stages needs architecture 'resnet'"),
        (
            "architecture: resnet\nstage_filters: [8, 16]\nspectral_stages: [2]",
            "spectral_stages must be distinct stage indices in 0..1",
        ),
        (
            "architecture: resnet\nspectral_stages: [1, 1]",
            "spectral_stages must be distinct",
        ),
        ("architecture: resnet\nspectral_stages: [true]", "spectral_stages must be distinct"),
        ("architecture: resnet\nspectral_stages: [1.0]", "spectral_stages must be distinct"),
        ("architecture: resnet\nspectral_stages: 2", "spectral_stages must be a list"),
        ("stage_filters: 64", "stage_filters must be a list"),
        ("stem_stride: 0", "stem_stride must be a positive integer"),
        ("learning_rate_schedule: step", "learning_rate_schedule must be one of"),
        ("batchnorm_momentum: 1.0", "batchnorm_momentum must be a number in \\(0, 1\\)"),
        ("batchnorm_momentum: fast", "batchnorm_momentum must be a number in \\(0, 1\\)"),
    ]:
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=message):
            load_model_config(bad)


def test_every_named_configuration_loads_and_has_a_model_card():
    names = sorted(path.stem for path in MODELS_DIR.glob("*.yaml"))
    assert "pathfinder_cf_norm" in names
    for name in names:
        assert load_model_config(name).name == name
        assert (MODELS_DIR / f"{name}.md").is_file(), f"{name} has no model card"


def _resnet(**changes) -> ModelConfig:
    """A small ResNet-family configuration: 3 stages of widths 4, 6, 8."""
    return ModelConfig(
        name="tiny_resnet",
        architecture="resnet",
        stage_filters=(4, 6, 8),
        dense_units=(),
        samples=1.0,
        generator="factorized",
        generator_rank=2,
        hidden_units=(8,),
    ).replace(**changes)


@pytest.mark.parametrize("size", [(16, 16), (15, 21)])
def test_resnet_downsamples_per_stage_with_shortcuts_where_shapes_change(size, rng):
    config = _resnet(blocks_per_stage=2)
    model = build_model(config, "spatial", (*size, 1), 3)
    assert not any(isinstance(layer, CFConv2D) for layer in model.layers)
    # "same" padding at stride 2 rounds odd sizes up: 15 -> 8 -> 4
    expected = [
        tuple(-(-side // 2**stage) for side in size) + (width,)
        for stage, width in enumerate(config.stage_filters)
    ]
    outputs = [model.get_layer(f"stage{s}_block1_relu1").output.shape[1:] for s in range(3)]
    assert outputs == expected
    # a 1x1 shortcut only where a block changes the shape: the first block of each
    # stage after the stem's width; the others add their input as it is
    shortcuts = sorted(layer.name for layer in model.layers if layer.name.endswith("_shortcut"))
    assert shortcuts == ["stage1_block0_shortcut", "stage2_block0_shortcut"]
    identity = model.get_layer("stage0_block1_add")
    assert model.get_layer("stage0_block0_relu1").output in identity.input
    probabilities = model(rng.uniform(0, 255, (2, *size, 1)).astype(np.float32)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_resnet_plain_twin_has_the_same_convolutions_and_no_shortcut():
    residual = build_model(_resnet(), "spatial", (16, 16, 1), 2)
    plain = build_model(_resnet(residual=False), "spatial", (16, 16, 1), 2)
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    convs = {
        model: sorted(
            (layer.name, layer.kernel.shape)
            for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D) and "shortcut" not in layer.name
        )
        for model in (residual, plain)
    }
    assert convs[residual] == convs[plain]


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_resnet_cf_variant_puts_cf_convs_in_the_spectral_stages_only(mode, rng):
    config = _resnet(spectral_stages=(1, 2), spectral_mode=mode)
    model = build_model(config, "cf", (12, 10, 1), 2, seed=3)
    cf_layers = {layer.name: layer for layer in model.layers if isinstance(layer, CFConv2D)}
    assert sorted(cf_layers) == ["stage1_block0_cfconv", "stage2_block0_cfconv"]
    # each at its stage's reduced resolution, with the stage's width
    assert cf_layers["stage1_block0_cfconv"].output.shape[1:] == (6, 5, 6)
    assert cf_layers["stage2_block0_cfconv"].output.shape[1:] == (3, 3, 8)
    kept = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert ("stage2_block0_conv1" in kept) == (mode == "add")
    assert "stage0_block0_conv1" in kept and "stage2_block0_conv0" in kept
    if mode == "add":  # the local 3x3 path and the global CF-Conv branch are summed
        local_global = model.get_layer("stage2_block0_local_global")
        assert model.get_layer("stage2_block0_cfconv_bn").output in local_global.input
    with pytest.raises(ValueError, match="needs spectral_stages"):
        build_model(config.replace(spectral_stages=()), "cf", (12, 10, 1), 2)
    # the spatial variant of the same configuration is the ordinary CNN
    spatial = build_model(config, "spatial", (12, 10, 1), 2)
    assert not any(isinstance(layer, CFConv2D) for layer in spatial.layers)
    images = rng.uniform(0, 255, (3, 12, 10, 1)).astype(np.float32)
    assert model(images, training=False).shape == (3, 1)


def test_resnet_cf_variant_trains_and_its_cf_layers_write_their_state(rng):
    from cfconv_tf.training import compile_model

    model = build_model(_resnet(spectral_stages=(2,)), "cf", (8, 8, 1), 2, seed=1)
    compile_model(model, 2, 1e-2)
    layer = model.get_layer("stage2_block0_cfconv")
    before = [layer.state_real.numpy(), layer.state_imag.numpy()]
    images = rng.uniform(0, 255, (8, 8, 8, 1)).astype(np.float32)
    model.fit(images, np.arange(8) % 2, epochs=1, batch_size=4, verbose=0)
    after = [layer.state_real.numpy(), layer.state_imag.numpy()]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert np.isfinite(model.predict(images, verbose=0)).all()


def test_pathfinder_resnet_configurations_are_the_ordinary_cnn_and_its_cf_variants():
    def trainable(name: str, variant: str) -> int:
        model = build_model(load_model_config(name), variant, (64, 64, 1), 2)
        return parameter_counts(model)["trainable"]

    ordinary = trainable("pathfinder_resnet", "spatial")
    # about the CF-Conv network's size; the CF-Conv that replaces a 3x3 convolution
    # keeps the parameter count within a few percent
    assert trainable("pathfinder_cf_norm", "cf") == pytest.approx(ordinary, rel=0.25)
    assert trainable("pathfinder_resnet", "cf") == pytest.approx(ordinary, rel=0.05)
    assert trainable("pathfinder_resnet_plain", "spatial") < ordinary
    # the global branch's equal-parameter control is within a few percent of it
    branch = trainable("pathfinder_resnet_global", "cf")
    assert trainable("pathfinder_resnet_wide", "spatial") == pytest.approx(branch, rel=0.05)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_resnet_stem_stride_and_batchnorm_momentum_reach_every_layer(mode):
    config = _resnet(
        stem_stride=2, batchnorm_momentum=0.9, spectral_stages=(2,), spectral_mode=mode
    )
    for variant in ("spatial", "cf"):
        model = build_model(config, variant, (16, 12, 1), 2)
        assert model.get_layer("stem").output.shape[1:] == (8, 6, 4)
        # the stages halve from the stem's resolution on
        assert model.get_layer("stage2_block0_relu1").output.shape[1:] == (2, 2, 8)
        norms = [
            layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert norms and {layer.momentum for layer in norms} == {0.9}
    # the defaults are the earlier network's: a full-resolution stem, Keras's momentum
    model = build_model(_resnet(), "spatial", (16, 12, 1), 2)
    assert model.get_layer("stem").output.shape[1:] == (16, 12, 4)
    assert model.get_layer("stem_bn").momentum == 0.99


def test_ordinary_cnns_downsample_early_and_keep_batchnorm_statistics_current():
    """The baselines as users tune them: pathfinder_resnet halves a 64-px image in its
    stem (its stage 0 had run at 64x64, ~5x the step time of the issue reporter's CNN)
    and both ResNets use BatchNorm momentum 0.9 (PyTorch's 0.1): with Keras's 0.99 the
    moving statistics lag a network that Adam changes quickly, and at a few hundred
    steps inference-mode accuracy stayed near chance while training accuracy rose."""
    pathfinder = build_model(load_model_config("pathfinder_resnet"), "spatial", (64, 64, 1), 2)
    assert pathfinder.get_layer("stem").output.shape[1:3] == (32, 32)
    assert pathfinder.get_layer("stage2_block0_relu1").output.shape[1:3] == (8, 8)
    # for 32-px images the stem keeps full resolution: the same stage sizes at half the input
    small = build_model(load_model_config("pathfinder32_resnet"), "spatial", (32, 32, 1), 2)
    assert small.get_layer("stem").output.shape[1:3] == (32, 32)
    assert small.get_layer("stage2_block0_relu1").output.shape[1:3] == (8, 8)
    for name in (
        "pathfinder_resnet",
        "pathfinder32_resnet",
        "pathfinder_resnet_plain",
        "pathfinder_resnet_global",
        "fashion_resnet",
    ):
        for variant in ("spatial", "cf"):
            model = build_model(load_model_config(name), variant, (28, 28, 1), 2)
            norms = [
                layer
                for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization)
            ]
            assert norms and all(layer.momentum == 0.9 for layer in norms), (name, variant)


def test_ordinary_cnns_decay_their_learning_rate_to_zero_by_the_runs_end():
    """Even at momentum 0.9 the statistics lagged at a constant learning rate: a
    pathfinder_resnet seed ended 314 steps at 50.5 % validation accuracy in inference
    mode and 78.2 % with batch statistics (78.4 % once the statistics were re-estimated
    with its final weights). A cosine decay lets the weights settle by the end."""
    from cfconv_tf.training import learning_rate

    for name in ("pathfinder_resnet", "fashion_resnet"):
        config = load_model_config(name)
        schedule = learning_rate(config, 300)
        assert float(schedule(0)) == pytest.approx(config.learning_rate)
        assert float(schedule(150)) == pytest.approx(config.learning_rate / 2, rel=1e-3)
        assert float(schedule(300)) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(load_model_config("pathfinder_cf"), 300) == 1e-3


@pytest.mark.parametrize(
    "stem_stride, size, skips",
    [
        # a skip from every shallower resolution: stage 0 at the input's, or where the
        # stem downsampled, the image itself; odd sizes round up at each stride 2
        (1, (16, 16), [(8, 8, 6), (16, 16, 4)]),
        (2, (16, 16), [(4, 4, 6), (8, 8, 4), (16, 16, 1)]),
        (1, (15, 21), [(8, 11, 6), (15, 21, 4)]),
        (2, (15, 21), [(4, 6, 6), (8, 11, 4), (15, 21, 1)]),
    ],
)
def test_dense_resnet_is_a_unet_back_to_the_input_resolution(stem_stride, size, skips, rng):
    config = _resnet(stem_stride=stem_stride, dense_units=(5,))
    model = build_model(config, "spatial", (*size, 1), 2, dense=True)
    assert model.output_shape == (None, *size, 1)
    assert not any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in model.layers)
    concats = [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]
    assert [tuple(layer.input[1].shape[1:]) for layer in concats] == skips
    # the deeper features, resized to the skip's resolution exactly
    assert [tuple(layer.input[0].shape[1:3]) for layer in concats] == [s[:2] for s in skips]
    probabilities = model(rng.uniform(0, 255, (2, *size, 1)).astype(np.float32)).numpy()
    assert probabilities.shape == (2, *size, 1)


def test_a_dense_unet_frozen_at_another_size_crops_what_that_size_needs(rng):
    from export.freeze import freeze_model

    trained = build_model(_resnet(stem_stride=2), "spatial", (16, 16, 1), 2, dense=True)
    for size in [(15, 21), (20, 20), (9, 13)]:
        frozen = freeze_model(trained, input_size=size)
        assert frozen.output_shape == (None, *size, 1)
        # the same network built at that size, with the same weights, computes the same
        built = build_model(_resnet(stem_stride=2), "spatial", (*size, 1), 2, dense=True)
        built.set_weights(trained.get_weights())
        images = rng.uniform(0, 255, (2, *size, 1)).astype(np.float32)
        np.testing.assert_allclose(
            frozen(images, training=False).numpy(), built(images, training=False).numpy(), atol=1e-5
        )


@pytest.mark.parametrize("variant", ["cf", "spatial"])
def test_dense_models_label_every_pixel_of_odd_and_non_square_images(tiny_config, variant, rng):
    size = (13, 18)
    for config in (tiny_config, _resnet(spectral_stages=(1,))):
        model = build_model(config, variant, (*size, 3), 4, seed=1, dense=True)
        images = rng.uniform(0, 255, (2, *size, 3)).astype(np.float32)
        probabilities = model(images, training=False).numpy()
        assert probabilities.shape == (2, *size, 4)  # a softmax over the classes per pixel
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
        # the head's dense layers act per pixel: a pixel's label depends on the image,
        # and the one-image answer is the batch's
        one = model(images[:1], training=False).numpy()
        np.testing.assert_allclose(one, probabilities[:1], atol=1e-5)
