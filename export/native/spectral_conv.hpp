// The native spectral convolution: rfft2 -> per-frequency channel mixing -> irfft2.
//
// One core, shared by every binding (the onnxruntime custom op now; a TensorFlow op can
// reuse it). It depends on no runtime: the caller hands it its own parallel-for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace cfconv {

// Runs task(0) ... task(count - 1), in any order, possibly at once.
using ParallelFor =
    std::function<void(std::size_t count, const std::function<void(std::size_t)>& task)>;

// How the spectral kernel's values are stored; they are computed with in float32 in every
// case.
enum class KernelType { kFloat32, kFloat16, kInt8 };

// The spectral kernel: its real and imaginary parts [W/2+1, H, Cin, Cout], the half
// spectrum with the width frequency outermost (so that the height frequencies of one
// width frequency, which one task mixes, are one contiguous run), stored as `type`
// (float16 halves the bytes a call streams, int8 quarters them). int8 parts come with
// `scale` [W/2+1, H, Cout], float32 and shared by both parts: the kernel is
// part[k][h][i][o] * scale[k][h][o]. Other types have no scale (nullptr).
struct SpectralKernel {
  const void* real;
  const void* imag;
  KernelType type;
  const float* scale = nullptr;
};

// What is applied to y as it is written: a ReLU here spares the graph a pass of its own
// over y.
enum class Activation { kNone, kRelu };

struct SpectralShape {
  std::int64_t batch, height, width, in_channels, out_channels;
  std::int64_t half_width() const { return width / 2 + 1; }
  std::int64_t frequencies() const { return height * half_width(); }
};

// Circular convolution of x [N, H, W, Cin] with the spectral kernel into y [N, H, W, Cout]:
// y = activation(irfft2(sum over Cin of rfft2(x) * kernel)), row-major, x and y float32.
// The DC (and Nyquist) columns of the product enter the inverse transform through their
// Hermitian part, as numpy's and TensorFlow's irfft2 take them.
//
// Scratch: one half spectrum of N * H * (W/2+1) * max(Cin, Cout) complex values, taken from
// `scratch` (at least scratch_floats(shape) floats), so a caller can keep it between calls.
void spectral_conv2d(const float* x, const SpectralKernel& kernel, Activation activation, float* y,
                     const SpectralShape& shape, float* scratch, const ParallelFor& parallel_for);

std::size_t scratch_floats(const SpectralShape& shape);

}  // namespace cfconv
