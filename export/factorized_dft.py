"""A 2D real DFT as short DFT stages (Cooley-Tukey), written as real matrices.

A dense DFT of length ``N`` costs ``N`` complex multiply-adds per point; splitting
``N = N1 N2`` costs ``N1 + N2`` (25 instead of 150 at ``N = 150 = 15 x 10``). Each stage
is one (batched) matmul with a small constant matrix, which any ONNX runtime runs well;
the twiddle factors between the stages are folded into the second stage's matrices (one
per first-stage frequency), so no elementwise complex arithmetic is needed.

Index conventions, per axis of length ``N = N1 N2``: the input index is
``n = N2 n1 + n2`` (``n1`` slow) and the output frequency ``k = k1 + N1 k2``. The first
stage takes the DFT over ``n1`` for every ``n2``; the second, over ``n2`` for every
``k1`` (with the twiddle ``exp(-2 pi i n2 k1 / N)``). The spectrum therefore comes out in
*digit-reversed* order, ``(k1, k2)`` with ``k1`` slow. A convolution never needs the
natural order: the kernel is permuted into the same order once (:meth:`kernel_order`)
and the inverse transform starts from that order.

Width (real input): the first stage is a real DFT of length ``N1``, keeping only
``k1 <= N1 // 2`` (the rest are complex conjugates), so the width spectrum has
``(N1 // 2 + 1) N2`` columns rather than ``N // 2 + 1``; the extra columns are redundant
copies of conjugate frequencies, filled consistently from the Hermitian kernel.
Height (complex after the width transform): a full complex DFT.

Complex vectors are stacked as real ``(re, im)`` pairs next to the axis a stage
contracts, so each stage is a real matmul by a ``[2 rows, 2 cols]`` block form.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


def _phase(rows: np.ndarray, cols: np.ndarray, length: int) -> np.ndarray:
    """``exp(-2 pi i r c / length)`` for the outer product of integer ``rows`` and ``cols``."""
    product = np.outer(rows, cols) % length  # exact integers before the division
    return np.exp(-2j * np.pi * product / length)


def _real_form(matrix: np.ndarray, parts_first_in: bool, parts_first_out: bool) -> np.ndarray:
    """A complex matrix ``[O, I]`` as a real ``[2 O, 2 I]`` acting on stacked (re, im) pairs.

    A complex vector of length ``I`` is stored as ``2 I`` reals either parts first
    (``[re_0..re_{I-1}, im_0..im_{I-1}]``) or parts last (``[re_0, im_0, re_1, ...]``).
    """
    rows, cols = matrix.shape
    block = np.empty((rows, 2, cols, 2))  # [out index, out part, in index, in part]
    block[:, 0, :, 0], block[:, 0, :, 1] = matrix.real, -matrix.imag
    block[:, 1, :, 0], block[:, 1, :, 1] = matrix.imag, matrix.real
    if parts_first_out:
        block = block.transpose(1, 0, 2, 3)
    if parts_first_in:
        block = block.transpose(0, 1, 3, 2)
    return block.reshape(2 * rows, 2 * cols)


def _divisor_pairs(length: int) -> list[tuple[int, int]]:
    return [(first, length // first) for first in range(1, length + 1) if length % first == 0]


@dataclass(frozen=True)
class FactorizedDFT:
    """The factorized transform pair of one ``height x width`` real convolution layer.

    ``width = width_first * width_second`` and ``height = height_first * height_second``
    (a prime length factorizes as ``length x 1``: one dense stage).
    """

    height: int
    width: int
    width_first: int
    height_first: int

    def __post_init__(self) -> None:
        for name, length, first in (
            ("width", self.width, self.width_first),
            ("height", self.height, self.height_first),
        ):
            if length < 1 or first < 1 or length % first:
                raise ValueError(f"{name} {length} is not split by a first stage of {first}")

    @classmethod
    def for_size(cls, height: int, width: int, channels: int) -> FactorizedDFT:
        """The splits with the fewest multiply-adds (:meth:`multiply_adds`) for a layer
        mixing ``channels`` inputs into as many outputs.

        A longer first width stage keeps fewer redundant columns for everything downstream;
        the inverse's first height stage reads both mixing products, so it counts twice and
        favours a short second height stage.

        Raises:
            ValueError: a size below 1.
        """
        if height < 1 or width < 1:
            raise ValueError(f"a {height}x{width} layer has no DFT plan: sizes must be >= 1")
        splits = [
            cls(height, width, width_first, height_first)
            for width_first, _ in _divisor_pairs(width)
            for height_first, _ in _divisor_pairs(height)
        ]
        return min(splits, key=lambda plan: plan.multiply_adds(channels, channels))

    @property
    def width_second(self) -> int:
        return self.width // self.width_first

    @property
    def height_second(self) -> int:
        return self.height // self.height_first

    @property
    def kept_first(self) -> int:
        """First-stage width frequencies kept, ``N1 // 2 + 1``."""
        return self.width_first // 2 + 1

    @property
    def width_columns(self) -> int:
        """Width spectrum columns in the factorized layout, ``(N1 // 2 + 1) N2``."""
        return self.kept_first * self.width_second

    @property
    def frequencies(self) -> int:
        """Spectrum entries per channel, ``width_columns * height``."""
        return self.width_columns * self.height

    # Forward stages ---------------------------------------------------------------------

    @cached_property
    def forward_width_first(self) -> np.ndarray:
        """``[2 K1, N1]``: real input -> ``(k1, part)`` rows, ``K1 = N1 // 2 + 1``."""
        phase = _phase(np.arange(self.kept_first), np.arange(self.width_first), self.width_first)
        return np.stack([phase.real, phase.imag], axis=1).reshape(2 * self.kept_first, -1)

    @cached_property
    def forward_width_second(self) -> np.ndarray:
        """``[K1, 2 N2, 2 N2]``: per ``k1``, the twiddled DFT over ``n2``.

        In (part, n2), out (k2, part).
        """
        return self._second_stages(self.width, self.width_first, self.kept_first, inverse=False)

    @cached_property
    def forward_height_first(self) -> np.ndarray:
        """``[2 N1, 2 N1]``: DFT over ``n1``; in (part, n1), out (k1, part)."""
        first = np.arange(self.height_first)
        return _real_form(_phase(first, first, self.height_first), True, False)

    @cached_property
    def forward_height_second(self) -> np.ndarray:
        """``[N1, 2 N2, 2 N2]``: per ``k1``, the twiddled DFT over ``n2``.

        In (part, n2), out (k2, part).
        """
        return self._second_stages(self.height, self.height_first, self.height_first, inverse=False)

    # Inverse stages (adjoints; the 1 / (H W) is in the last one) -------------------------

    @cached_property
    def inverse_height_second(self) -> np.ndarray:
        """``[N1, 2 N2, 2 N2]``: per ``k1``, back over ``k2``; in (k2, part), out (part, n2)."""
        return self._second_stages(self.height, self.height_first, self.height_first, inverse=True)

    @cached_property
    def inverse_height_first(self) -> np.ndarray:
        """``[2 N1, 2 N1]``: back over ``k1``; in (k1, part), out (part, n1)."""
        first = np.arange(self.height_first)
        return _real_form(_phase(first, first, self.height_first).conj().T, False, True)

    @cached_property
    def inverse_width_second(self) -> np.ndarray:
        """``[K1, 2 N2, 2 N2]``: per ``k1``, back over ``k2``; in (k2, part), out (part, n2)."""
        return self._second_stages(self.width, self.width_first, self.kept_first, inverse=True)

    @cached_property
    def inverse_width_first(self) -> np.ndarray:
        """``[N1, 2 K1]``: ``(k1, part)`` -> real output, with ``1 / (H W)``.

        The dropped ``k1 > N1 // 2`` are conjugates of kept ones, so interior ``k1`` count
        twice (as in every inverse real DFT); ``k1 = 0`` (and ``N1 / 2``) count once, and
        their imaginary parts meet ``sin = 0``.
        """
        weights = np.full(self.kept_first, 2.0)
        weights[0] = 1.0
        if self.width_first % 2 == 0:
            weights[-1] = 1.0
        phase = _phase(np.arange(self.width_first), np.arange(self.kept_first), self.width_first)
        conjugate = phase.conj() * weights  # exp(+2 pi i n1 k1 / N1) c_k1
        stacked = np.stack([conjugate.real, -conjugate.imag], axis=2)  # Re(z e) = zr er - zi ei
        return stacked.reshape(self.width_first, -1) / (self.height * self.width)

    def _second_stages(self, length: int, first: int, kept: int, inverse: bool) -> np.ndarray:
        """Per first-stage frequency ``k1 < kept``: the twiddled DFT over ``n2`` (or its adjoint).

        ``exp(-2 pi i n2 (k1 + N1 k2) / N)`` for ``k2, n2 < N2 = length / first``.
        """
        second = np.arange(length // first)
        stages = []
        for k1 in range(kept):
            matrix = _phase(k1 + first * second, second, length)  # [k2, n2]
            if inverse:
                stages.append(_real_form(matrix.conj().T, False, True))
            else:
                stages.append(_real_form(matrix, True, False))
        return np.stack(stages)

    def multiply_adds(self, cin: int, cout: int) -> int:
        """Real multiply-adds per image of the ONNX lowering's MatMuls (its exact sizes).

        The first inverse stage counts twice: it reads the mixing's two products side by
        side (:func:`export.onnx_spectral.factorized_spectral_conv2d`).
        """
        kept, columns, height = self.kept_first, self.width_columns, self.height
        width_stages = (
            2 * kept * self.width_first * self.width_second * height
            + kept * 4 * self.width_second**2 * height
        )
        height_first = columns * 4 * self.height_first**2 * self.height_second
        height_second = columns * self.height_first * 4 * self.height_second**2
        forward = width_stages + height_first + height_second
        inverse = width_stages + height_first + 2 * height_second
        return forward * cin + 4 * self.frequencies * cin * cout + inverse * cout

    # The spectrum's order -----------------------------------------------------------------

    def frequency_order(self) -> tuple[np.ndarray, np.ndarray]:
        """``(row, column)`` frequency of every spectrum entry, each ``[frequencies]``.

        Entries are ordered ``(k1_w, k2_w, k1_h, k2_h)``, first index slowest; the column
        ``k1_w + N1 k2_w`` runs up to ``width - 1`` (beyond ``width // 2`` it is the
        conjugate of column ``width - k``).
        """
        kept, wsecond = np.arange(self.kept_first), np.arange(self.width_second)
        hfirst, hsecond = np.arange(self.height_first), np.arange(self.height_second)
        columns = (kept[:, None] + self.width_first * wsecond[None, :]).reshape(-1)
        rows = (hfirst[:, None] + self.height_first * hsecond[None, :]).reshape(-1)
        return np.tile(rows, columns.size), np.repeat(columns, rows.size)

    def kernel_order(
        self, kernel_real: np.ndarray, kernel_imag: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A half-spectrum kernel ``[H, W//2+1, Cin, Cout]`` -> ``[frequencies, Cin, Cout]`` twice.

        Columns beyond ``W // 2`` take the Hermitian extension ``conj(K[-h, W - k])``, so
        the product with a real input's spectrum stays Hermitian. The DC (and Nyquist)
        columns must already be Hermitian (``cfconv_tf.spectral.hermitian_project``).
        """
        expected = (self.height, self.width // 2 + 1)
        if tuple(kernel_real.shape[:2]) != expected or kernel_imag.shape != kernel_real.shape:
            raise ValueError(
                f"kernel parts of shape {kernel_real.shape} / {kernel_imag.shape} do not match "
                f"a {self.height}x{self.width} layer (expected {expected} + [Cin, Cout])"
            )
        source_rows, source_columns, sign = self.half_spectrum_sources()
        real = kernel_real[source_rows, source_columns]
        imag = kernel_imag[source_rows, source_columns] * sign[:, None, None]
        return real.astype(np.float32), imag.astype(np.float32)

    def half_spectrum_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each spectrum entry's kernel comes from in the half spectrum:
        ``(row, column, sign)``, each ``[frequencies]``; ``sign`` (-1 for the Hermitian
        extension of columns beyond ``W // 2``, else 1) multiplies the imaginary part.
        Anything stored per half-spectrum frequency (a kernel, its factors, its scales)
        follows the kernel into this order by ``array[row, column]``."""
        rows, columns = self.frequency_order()
        mirrored = columns > self.width // 2
        source_rows = np.where(mirrored, (-rows) % self.height, rows)
        source_columns = np.where(mirrored, self.width - columns, columns)
        return source_rows, source_columns, np.where(mirrored, -1.0, 1.0)
