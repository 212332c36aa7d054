"""cfconv_tf: Continuous Fourier Convolutions (CF-Convs) for TensorFlow/Keras."""

from cfconv_tf.generator import PAPER_HIDDEN_UNITS, CoordinateMLP
from cfconv_tf.layers import CFConv2D

__all__ = ["PAPER_HIDDEN_UNITS", "CFConv2D", "CoordinateMLP"]
