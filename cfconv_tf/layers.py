"""The Continuous Fourier Convolution layer (CF-Conv, Harper et al.)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from cfconv_tf.generator import (
    PAPER_HIDDEN_UNITS,
    CoordinateMLP,
    FactorizedGenerator,
    validate_generator,
    validate_generator_rank,
)
from cfconv_tf.sampling import draw_positions, resolve_sample_count, validate_samples
from cfconv_tf.spectral import hermitian_project, sampled_spectral_conv2d, spectral_conv2d

NAMED_STATE_INITIALIZERS = ("cfconv_uniform", "generator")
KERNEL_GRADIENTS = ("auto", "sampled", "full")
KERNEL_SOURCES = ("state", "mlp")  # where an inference kernel comes from
# Training takes each sampled entry's gradient directly (one dot product over the batch)
# while the sample count is at most this fraction of the kernel; above it, the full
# kernel gradient (two batched matmuls) and a gather are cheaper. Measured at 150x150,
# 32->32, batch 32 (`cfconv bench layer`, docs/benchmarks.md): sampled faster at 0.035 %
# and 0.28 % of the kernel, slower at 2.2 %.
SAMPLED_GRADIENT_FRACTION = 1 / 256


def validate_recompute_generators(recompute: bool) -> bool:
    """Check a ``recompute_generators`` setting: a real bool (YAML ``1`` is refused)."""
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute_generators must be true or false, got {recompute!r}")
    return recompute


def validate_kernel_scale(scale: float | str) -> float | str:
    """Check a ``kernel_scale`` setting: a positive number (as float) or ``"auto"``."""
    if scale == "auto":
        return scale
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
        raise ValueError(f"kernel_scale must be a positive number or 'auto', got {scale!r}")
    return float(scale)


@keras.saving.register_keras_serializable(package="cfconv_tf")
class CFConv2D(keras.layers.Layer):
    """2D convolution whose kernel lives in the Fourier domain and is drawn by two MLPs.

    State: the half-spectrum kernel ``K = Kr + j Ki``, two non-trainable float32
    variables of shape ``[H, W//2+1, Cin, filters]``, initialized uniform in [-1, 1]
    (paper sec. 5). Trainable weights: two generators (``real_generator``,
    ``imag_generator``) of the kernel value at a position ``(h, w, i, o)``: the
    paper's :class:`~cfconv_tf.generator.CoordinateMLP` or a
    :class:`~cfconv_tf.generator.FactorizedGenerator`.

    Training call: draw ``samples`` positions, evaluate both MLPs only there, write
    ``K <- K + update_rate * (MLP - K)`` at those positions with
    ``tf.tensor_scatter_nd_update`` (``update_rate=1`` is the paper's overwrite),
    convolve with the updated kernel and keep it as the new state (when every entry is
    drawn, the dense update, the generated kernel is the new one: no scatter). The loss
    gradient reaches the MLPs only through the written values. Inference call, and any
    call while ``trainable`` is False (a frozen backbone under fine-tuning): the state is
    used as it is; nothing is drawn or written.

    Keras resolves ``training`` from the outermost call: ``model(x)`` without
    ``training=False`` runs in training mode when a layer whose ``call`` defaults to
    ``training=True`` (``RandomFlip``, ``RandomRotation``, ...) is called first, and
    then writes the state. Call a model for predictions as ``model(x, training=False)``
    or with ``model.predict``.

    In both modes the DC (and Nyquist) column is made Hermitian before the transform
    (see :func:`cfconv_tf.spectral.hermitian_project`), so every FFT implementation
    computes the same function.

    Input ``[B, H, W, Cin]`` with H, W fixed at build -> output ``[B, H, W, filters]``
    (circular convolution, then ``activation``). Under a mixed-precision policy the
    transforms, the state and the generators stay in float32 (TensorFlow's FFTs take no
    float16) and only the output is in the compute dtype, as keras-hub's FNet does.

    Args:
        filters: output channels.
        samples: positions re-evaluated per training step: a count (capped at the
            kernel size) or a fraction in (0, 1]; the whole kernel means the dense,
            "naive" update.
        generator: ``"coordinate_mlp"`` (the paper's MLP of ``(h, w, i, o)``) or
            ``"factorized"`` (an MLP of ``(h, w)`` times per-channel-pair factors; see
            :class:`~cfconv_tf.generator.FactorizedGenerator`).
        generator_rank: the factorized generator's number of factors.
        hidden_units: hidden widths of each generator MLP (paper's by default).
        fourier_bands: Fourier-feature bands of the generators' input (0 = the paper's
            raw coordinates; see :class:`CoordinateMLP`).
        generator_initializer: the generators' hidden-layer weight initializer,
            ``"glorot_uniform"`` (Keras' default) or ``"he_normal"`` (see
            :class:`CoordinateMLP`).
        update_rate: ``g`` in (0, 1] of the write ``K + g (MLP - K)``.
        activation: applied in the spatial domain after the inverse transform.
        state_initializer: initializer of both state variables: ``"cfconv_uniform"``
            (uniform in [-1, 1], the paper's), ``"generator"`` (the MLPs' own scaled
            output at every position, so state and generator agree from the start),
            or any Keras initializer.
        kernel_scale: factor on the MLPs' outputs wherever they become kernel values
            (training writes, ``generate_kernel``): ``1.0`` is the paper's; ``"auto"``
            fixes it at build so that the freshly initialized generators give a
            kernel of mean power ``E|K|^2 = 2 / Cin``, the spectral counterpart of He
            initialization (a spectral layer with i.i.d. entries scales the variance
            of a ReLU network's activations by ``Cin E|K|^2 / 2``).
        recompute_generators: keep no MLP activations for the backward pass and
            evaluate the generators again there (``tf.recompute_grad``): less memory at
            large sample counts for one more forward pass of the MLPs; same gradients.
        kernel_gradient: how training takes the gradient of the written values:
            ``"sampled"`` (one dot product over the batch per sampled entry), ``"full"``
            (the whole kernel's gradient, then a gather) or ``"auto"`` (sampled while
            the count is at most ``SAMPLED_GRADIENT_FRACTION`` of the kernel). Both
            give the same gradient; only the speed differs.
        seed: seed of the position sampler (and of the ``"auto"`` scale's probe);
            ``None`` picks one from Python's ``random`` (seeded by
            ``keras.utils.set_random_seed``). Step ``t`` draws with the stateless seed
            ``(seed, t)``, kept in the non-trainable ``sampler_state`` weight.
    """

    def __init__(
        self,
        filters: int,
        samples: int | float = 4096,
        generator: str = "coordinate_mlp",
        generator_rank: int = 16,
        hidden_units: Sequence[int] = PAPER_HIDDEN_UNITS,
        fourier_bands: int = 0,
        generator_initializer: str = "glorot_uniform",
        update_rate: float = 1.0,
        activation=None,
        state_initializer="cfconv_uniform",
        kernel_scale: float | str = 1.0,
        kernel_gradient: str = "auto",
        recompute_generators: bool = False,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        # no autocast of inputs or weights: the layer keeps its kernel and transforms in
        # float32 itself (its float weights are also created with autocast=False, which
        # holds where a mixed layer sits in a float32 model)
        super().__init__(**{**kwargs, "autocast": False})
        if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        if not 0.0 < float(update_rate) <= 1.0:
            raise ValueError(f"update_rate must lie in (0, 1], got {update_rate}")
        self.filters = filters
        self.samples = validate_samples(samples)
        self.hidden_units = tuple(int(units) for units in hidden_units)
        self.update_rate = float(update_rate)
        self.activation = keras.activations.get(activation)
        self.kernel_scale = validate_kernel_scale(kernel_scale)
        if kernel_gradient not in KERNEL_GRADIENTS:
            raise ValueError(
                f"kernel_gradient must be one of {KERNEL_GRADIENTS}, got {kernel_gradient!r}"
            )
        self.kernel_gradient = kernel_gradient
        self.recompute_generators = validate_recompute_generators(recompute_generators)
        if state_initializer in NAMED_STATE_INITIALIZERS:
            self.state_initializer = state_initializer
        else:
            self.state_initializer = keras.initializers.get(state_initializer)
        self.seed = seed
        self.sampler_seed = seed if seed is not None else random.randint(1, 2**31 - 1)
        self.fourier_bands = fourier_bands
        self.generator_initializer = generator_initializer
        self.generator = validate_generator(generator)
        self.generator_rank = validate_generator_rank(generator_rank)
        # The generators write into the float32 state, so they compute in float32 whatever
        # the layer's dtype policy (under mixed precision only the output is cast).
        self.real_generator, self.imag_generator = (
            CoordinateMLP(
                self.hidden_units, fourier_bands, generator_initializer, name=name, dtype="float32"
            )
            if generator == "coordinate_mlp"
            else FactorizedGenerator(
                generator_rank,
                self.hidden_units,
                fourier_bands,
                generator_initializer,
                name=name,
                dtype="float32",
            )
            for name in ("real_generator", "imag_generator")
        )

    def build(self, input_shape) -> None:
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.name} expects inputs of shape [batch, height, width, channels], "
                f"got shape {tuple(input_shape)}"
            )
        height, width, channels = input_shape[1:]
        if None in (height, width, channels):
            raise ValueError(
                f"{self.name} needs a fixed height, width and channel count (its "
                f"spectral kernel is defined on that grid), got shape {tuple(input_shape)}"
            )
        self.input_size = (int(height), int(width))
        self.kernel_shape = (int(height), int(width) // 2 + 1, int(channels), self.filters)
        self.sample_count = resolve_sample_count(self.samples, self.kernel_size)
        for generator in (self.real_generator, self.imag_generator):
            # a coordinate MLP reads [n, 4] coordinates; a factorized one needs the
            # channel counts of the kernel
            generator.build((None, 4) if self.generator == "coordinate_mlp" else self.kernel_shape)
        # Initial values that depend on the generators are initializers, not assignments
        # after creation: Keras may build the layer while it traces a subclassed model
        # statelessly, where assignments are dropped and variables initialized afterwards.
        # Under tf.distribute every replica computes the same update (same positions,
        # same mirrored MLP weights); "only_first_replica" makes the first replica's
        # write the one every copy receives, so the copies cannot drift apart.
        initial_scale = functools.cache(self._initial_scale)  # evaluated once, when needed
        self.state_real, self.state_imag = (
            self.add_weight(
                name=name,
                shape=self.kernel_shape,
                initializer=self._state_part_initializer(stream, initial_scale),
                trainable=False,
                dtype="float32",
                autocast=False,
                aggregation="only_first_replica",
            )
            for stream, name in enumerate(("state_real", "state_imag"))
        )
        self.sampler_state = self.add_weight(
            name="sampler_state",
            shape=(2,),
            dtype="int64",
            initializer=lambda shape, dtype: tf.constant([self.sampler_seed, 0], dtype),
            trainable=False,
            aggregation="only_first_replica",
        )
        self.generator_scale = self.add_weight(
            name="generator_scale",
            shape=(),
            initializer=lambda shape, dtype: tf.constant(initial_scale(), dtype),
            trainable=False,
            dtype="float32",
            autocast=False,
            aggregation="only_first_replica",
        )
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: int(channels)})

    def _state_part_initializer(self, stream: int, scale: Callable[[], float]):
        """The initializer of one state variable (``stream`` 0: real, 1: imaginary).

        ``scale`` gives ``generator_scale``'s initial value (for ``"generator"``).

        ``"cfconv_uniform"`` draws each part from its own stateless stream of the
        layer's seed, so the real and imaginary parts are independent (one seeded
        Keras initializer would give both the same values).
        """
        if self.state_initializer == "cfconv_uniform":
            return lambda shape, dtype: tf.random.stateless_uniform(
                shape, seed=(self.sampler_seed, 2 + stream), minval=-1.0, maxval=1.0, dtype=dtype
            )
        if self.state_initializer == "generator":
            generator = (self.real_generator, self.imag_generator)[stream]
            return lambda shape, dtype: tf.cast(generator.kernel(shape) * scale(), dtype)
        return self.state_initializer

    def _initial_scale(self) -> float:
        """``generator_scale`` at build: ``kernel_scale``, or He's for ``"auto"``."""
        return self._he_scale() if self.kernel_scale == "auto" else self.kernel_scale

    def _he_scale(self, probes: int = 2**14) -> float:
        """The factor that gives the unscaled generators' kernel ``E|K|^2 = 2 / Cin``.

        Measured on the whole kernel when it has at most ``probes`` entries, else
        estimated from both MLPs at ``probes`` positions drawn with the layer's seed.
        """
        if self.kernel_size <= probes:
            positions = tf.range(self.kernel_size, dtype=tf.int64)
        else:
            positions = tf.random.stateless_uniform(
                [probes], seed=(self.seed or 0, 1), maxval=self.kernel_size, dtype=tf.int64
            )
        power = tf.reduce_mean(
            tf.square(self.real_generator.values(positions, self.kernel_shape))
            + tf.square(self.imag_generator.values(positions, self.kernel_shape))
        )
        return float(tf.sqrt(2.0 / self.kernel_shape[2] / tf.maximum(power, 1e-30)))

    @property
    def uses_sampled_gradient(self) -> bool:
        """Whether training takes the kernel gradient only at the sampled entries."""
        if self.kernel_gradient == "auto":
            return self.sample_count <= self.kernel_size * SAMPLED_GRADIENT_FRACTION
        return self.kernel_gradient == "sampled"

    @property
    def kernel_size(self) -> int:
        """Number of entries of one state variable, ``H * Wf * Cin * Cout``."""
        height, half_width, channels, filters = self.kernel_shape
        return height * half_width * channels * filters

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if tuple(inputs.shape[1:3]) != self.input_size:
            raise ValueError(
                f"{self.name} was built for {self.input_size[0]}x{self.input_size[1]} "
                f"inputs (its spectral kernel lives on that grid), got "
                f"{inputs.shape[1]}x{inputs.shape[2]}. Freeze or export the model at "
                f"the new size instead (the MLPs re-sample the kernel there)."
            )
        x = tf.cast(inputs, tf.float32)  # FFTs take float32 only: mixed precision ends here
        if training and self.trainable:
            (kernel_real, kernel_imag), positions, values = self.sparse_update()
            if self.uses_sampled_gradient:
                y = sampled_spectral_conv2d(x, kernel_real, kernel_imag, positions, *values)
                return self.activation(tf.cast(y, self.compute_dtype))
        else:
            kernel_real = tf.convert_to_tensor(self.state_real)
            kernel_imag = tf.convert_to_tensor(self.state_imag)
        kernel_real, kernel_imag = hermitian_project(kernel_real, kernel_imag, self.input_size[1])
        y = spectral_conv2d(x, kernel_real, kernel_imag)
        return self.activation(tf.cast(y, self.compute_dtype))

    def sparse_update(
        self,
    ) -> tuple[tuple[tf.Tensor, tf.Tensor], tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
        """Write freshly generated values at sampled positions; return the new kernel.

        Returns ``((kernel_real, kernel_imag), positions, (values_real, values_imag))``:
        the kernel parts ``[H, Wf, Cin, Cout]`` (the gradient flows into them only
        through the written values), the int64 flat ``positions`` ``[S]`` and the values
        ``[S]`` written there.
        """
        dense = self.sample_count == self.kernel_size
        if dense:
            positions = tf.range(self.kernel_size, dtype=tf.int64)
            carries_gradient = None
        else:
            positions, carries_gradient = draw_positions(
                self.sample_count, self.kernel_size, self.next_sampler_seed()
            )
        new_kernels, written = [], []
        for state, generator in (
            (self.state_real, self.real_generator),
            (self.state_imag, self.imag_generator),
        ):
            flat_state = tf.reshape(tf.convert_to_tensor(state), [-1])
            generate = functools.partial(self._generated_values, generator, dense=dense)
            if self.recompute_generators:  # re-run in the backward pass
                generate = tf.recompute_grad(generate)
            values = generate(positions) * self.generator_scale
            if carries_gradient is not None:
                values = tf.where(carries_gradient, values, tf.stop_gradient(values))
            if self.update_rate != 1.0:
                old = flat_state if dense else tf.gather(flat_state, positions)
                values = old + self.update_rate * (values - old)
            if dense:  # every entry is written: the values are the kernel, no scatter
                flat_kernel = values
            else:
                flat_kernel = tf.tensor_scatter_nd_update(flat_state, positions[:, None], values)
            kernel = tf.reshape(flat_kernel, self.kernel_shape)
            state.assign(tf.stop_gradient(kernel))
            new_kernels.append(kernel)
            written.append(values)
        return tuple(new_kernels), positions, tuple(written)

    def _generated_values(
        self, generator: CoordinateMLP | FactorizedGenerator, positions: tf.Tensor, dense: bool
    ) -> tf.Tensor:
        """A generator's unscaled values ``[S]`` at ``positions`` (every one if dense)."""
        if dense:  # the whole kernel at once is cheaper for a factorized generator
            return tf.reshape(generator.kernel(self.kernel_shape), [-1])
        return generator.values(positions, self.kernel_shape)

    def next_sampler_seed(self) -> tf.Tensor:
        """The seed of this training step's draw, ``[layer seed, draws so far]``.

        Returns it (int64 ``[2]``) and counts the draw. The counter is part of the
        layer's weights, so a resumed run continues the same sequence of draws, and
        all replicas of a distributed run (which hold the same counter) draw alike.
        """
        seed = tf.convert_to_tensor(self.sampler_state)
        self.sampler_state.assign(seed + tf.constant([0, 1], tf.int64))
        return seed

    def generate_kernel(
        self, input_size: tuple[int, int] | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Evaluate both generators at every position of the kernel grid for ``input_size``.

        The coordinates are normalized, so the same generators give a kernel for
        another input size (the continuous-kernel property). No gradient flows.

        Returns:
            ``(kernel_real, kernel_imag)``, each ``[H', W'//2+1, Cin, Cout]`` float32.
        """
        height, width = input_size or self.input_size
        kernel_shape = (height, width // 2 + 1) + self.kernel_shape[2:]
        return tuple(
            tf.stop_gradient(generator.kernel(kernel_shape) * self.generator_scale)
            for generator in (self.real_generator, self.imag_generator)
        )

    def inference_kernel(
        self, source: str = "state", input_size: tuple[int, int] | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The kernel an inference model of this layer uses, Hermitian-projected.

        Args:
            source: ``"state"`` (the stored state: what the layer computes at
                inference) or ``"mlp"`` (the MLPs at every position, any input size).
            input_size: ``(H, W)``; only ``"mlp"`` can give a size other than the
                trained one.

        Returns:
            ``(kernel_real, kernel_imag)``, each ``[H, W//2+1, Cin, Cout]``.
        """
        size = tuple(input_size or self.input_size)
        if source not in KERNEL_SOURCES:
            raise ValueError(f"unknown kernel source {source!r}; choose one of {KERNEL_SOURCES}")
        if source == "state":
            if size != self.input_size:
                raise ValueError(
                    f"{self.name}: the stored spectral state is defined on the "
                    f"{self.input_size[0]}x{self.input_size[1]} grid it was trained at, and "
                    f"this layer now sees {size[0]}x{size[1]}; freeze with source='mlp' to "
                    f"re-sample the kernel from its generators"
                )
            kernel = (tf.convert_to_tensor(self.state_real), tf.convert_to_tensor(self.state_imag))
        else:
            kernel = self.generate_kernel(size)
        return hermitian_project(*kernel, size[1])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "samples": self.samples,
                "generator": self.generator,
                "generator_rank": self.generator_rank,
                "hidden_units": list(self.hidden_units),
                "fourier_bands": self.fourier_bands,
                "generator_initializer": self.generator_initializer,
                "update_rate": self.update_rate,
                "activation": keras.activations.serialize(self.activation),
                "state_initializer": self.state_initializer
                if isinstance(self.state_initializer, str)
                else keras.initializers.serialize(self.state_initializer),
                "kernel_scale": self.kernel_scale,
                "kernel_gradient": self.kernel_gradient,
                "recompute_generators": self.recompute_generators,
                "seed": self.seed,
            }
        )
        return config
