// The native spectral convolution (spectral_conv.hpp), on pocketfft.
//
// Three passes over the batch, each split into independent tasks for the caller's
// parallel-for:
//   1. rfft2 of each image, 8 channels per task (pocketfft vectorizes across them), written
//      frequency-major: S[f][n][c];
//   2. channel mixing per frequency, T[f][n][:] = S[f][n][:] @ K[f], a small complex GEMM
//      whose kernel block K[f] (Cin x Cout) is read once for the whole batch and stays in L1
//      while every image uses it;
//   3. irfft2 of each image's T back to y, 8 channels per task.
#include "spectral_conv.hpp"

#define POCKETFFT_NO_MULTITHREADING  // the caller's parallel-for runs the tasks
#define POCKETFFT_CACHE_SIZE 16      // plans for the sizes a model uses, kept between calls
#include <pocketfft_hdronly.h>

#include <algorithm>
#include <complex>
#include <vector>

namespace cfconv {
namespace {

using complex = std::complex<float>;
typedef float vfloat __attribute__((vector_size(32)));       // 8 lanes: one AVX register
typedef _Float16 vhalf __attribute__((vector_size(16)));     // 8 half-precision lanes
constexpr std::int64_t kLanes = 8;

// 8 kernel values from `source` as float32 lanes.
inline vfloat load_lanes(const float* source) {
  vfloat lanes;
  __builtin_memcpy(&lanes, source, sizeof(vfloat));
  return lanes;
}
inline vfloat load_lanes(const _Float16* source) {
  vhalf lanes;
  __builtin_memcpy(&lanes, source, sizeof(vhalf));
  return __builtin_convertvector(lanes, vfloat);  // F16C's vcvtph2ps where the CPU has it
}
constexpr std::int64_t kChannelsPerTask = 8;  // pocketfft's float vector width on AVX
constexpr std::int64_t kFrequenciesPerTask = 32;

// out[n][c0 : c0 + 8 * TV] = sum_i x[n][i] * K[i][c0 : ...] for images n0 .. n0 + TN - 1 of
// one frequency. x and out are complex rows ([N][Cin], [N][Cout]); the kernel parts are
// [Cin][Cout]. TN images share each load of a kernel row; the 2 * TN * TV accumulators stay
// in registers.
template <int TN, int TV, typename K>
void mix_block(const complex* x, const K* kernel_real, const K* kernel_imag,
               complex* out, std::int64_t cin, std::int64_t cout, std::int64_t n0,
               std::int64_t c0) {
  vfloat acc_real[TN][TV] = {}, acc_imag[TN][TV] = {};
  for (std::int64_t i = 0; i < cin; ++i) {
    vfloat kr[TV], ki[TV];
    for (int v = 0; v < TV; ++v) {
      kr[v] = load_lanes(kernel_real + i * cout + c0 + v * kLanes);
      ki[v] = load_lanes(kernel_imag + i * cout + c0 + v * kLanes);
    }
    for (int j = 0; j < TN; ++j) {
      const float xr = x[(n0 + j) * cin + i].real(), xi = x[(n0 + j) * cin + i].imag();
      for (int v = 0; v < TV; ++v) {
        acc_real[j][v] += xr * kr[v] - xi * ki[v];
        acc_imag[j][v] += xr * ki[v] + xi * kr[v];
      }
    }
  }
  for (int j = 0; j < TN; ++j)
    for (int v = 0; v < TV; ++v)
      for (int lane = 0; lane < kLanes; ++lane)
        out[(n0 + j) * cout + c0 + v * kLanes + lane] =
            complex(acc_real[j][v][lane], acc_imag[j][v][lane]);
}

// The same product for any image and channel range (what the blocks leave over).
template <typename K>
void mix_any(const complex* x, const K* kernel_real, const K* kernel_imag,
             complex* out, std::int64_t cin, std::int64_t cout, std::int64_t n0,
             std::int64_t n1, std::int64_t c0, std::int64_t c1) {
  for (std::int64_t n = n0; n < n1; ++n)
    for (std::int64_t c = c0; c < c1; ++c) {
      complex acc = 0;
      for (std::int64_t i = 0; i < cin; ++i)
        acc += x[n * cin + i] * complex(static_cast<float>(kernel_real[i * cout + c]),
                                        static_cast<float>(kernel_imag[i * cout + c]));
      out[n * cout + c] = acc;
    }
}

// Images n0 .. n0 + TN - 1, every output channel: blocks of 8 * TV channels, then of 8,
// then the rest one by one.
template <int TN, int TV, typename K>
void mix_images(const complex* x, const K* kernel_real, const K* kernel_imag,
                complex* out, std::int64_t cin, std::int64_t cout, std::int64_t n0) {
  std::int64_t c0 = 0;
  for (; c0 + TV * kLanes <= cout; c0 += TV * kLanes)
    mix_block<TN, TV, K>(x, kernel_real, kernel_imag, out, cin, cout, n0, c0);
  for (; c0 + kLanes <= cout; c0 += kLanes)
    mix_block<TN, 1, K>(x, kernel_real, kernel_imag, out, cin, cout, n0, c0);
  mix_any(x, kernel_real, kernel_imag, out, cin, cout, n0, n0 + TN, c0, cout);
}

// One frequency: out [N][Cout] = x [N][Cin] @ K [Cin][Cout], four images at a time (one
// image reads four vectors of each kernel row instead).
template <typename K>
void mix_frequency(const complex* x, const K* kernel_real, const K* kernel_imag,
                   complex* out, std::int64_t batch, std::int64_t cin, std::int64_t cout) {
  std::int64_t n0 = 0;
  for (; n0 + 4 <= batch; n0 += 4) mix_images<4, 1, K>(x, kernel_real, kernel_imag, out, cin, cout, n0);
  switch (batch - n0) {
    case 3: return mix_images<3, 1, K>(x, kernel_real, kernel_imag, out, cin, cout, n0);
    case 2: return mix_images<2, 2, K>(x, kernel_real, kernel_imag, out, cin, cout, n0);
    case 1: return mix_images<1, 4, K>(x, kernel_real, kernel_imag, out, cin, cout, n0);
  }
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// This thread's transform buffer, grown to at least `size` complex values.
complex* local_spectrum(std::int64_t size) {
  thread_local std::vector<complex> buffer;
  if (static_cast<std::int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

template <typename K>
void mix_all(const complex* spectrum, const K* kernel_real, const K* kernel_imag,
             complex* mixed, const SpectralShape& s, const ParallelFor& parallel_for) {
  const std::int64_t n_images = s.batch, cin = s.in_channels, cout = s.out_channels;
  const std::int64_t f = s.frequencies();
  parallel_for(static_cast<std::size_t>(ceil_div(f, kFrequenciesPerTask)), [&](std::size_t task) {
    const std::int64_t first = task * kFrequenciesPerTask;
    const std::int64_t last = std::min(f, first + kFrequenciesPerTask);
    for (std::int64_t k = first; k < last; ++k)
      mix_frequency(spectrum + k * n_images * cin, kernel_real + k * cin * cout,
                    kernel_imag + k * cin * cout, mixed + k * n_images * cout, n_images, cin,
                    cout);
  });
}

}  // namespace

std::size_t scratch_floats(const SpectralShape& s) {
  return static_cast<std::size_t>(2 * s.frequencies() * s.batch *
                                  (s.in_channels + s.out_channels));
}

void spectral_conv2d(const float* x, const void* kernel_real, const void* kernel_imag,
                     KernelType kernel_type, float* y, const SpectralShape& s, float* scratch,
                     const ParallelFor& parallel_for) {
  const std::int64_t n_images = s.batch, h = s.height, w = s.width, wf = s.half_width();
  const std::int64_t cin = s.in_channels, cout = s.out_channels, f = s.frequencies();
  auto* spectrum = reinterpret_cast<complex*>(scratch);  // [F][N][Cin]
  complex* mixed = spectrum + f * n_images * cin;          // [F][N][Cout]
  const std::size_t fsize = sizeof(float), csize = sizeof(complex);
  const pocketfft::shape_t axes{0, 1};

  // Each transform runs in a contiguous per-thread buffer [H][W/2+1][8] (it fits in L2);
  // only whole 8-channel rows cross to and from the batch-wide frequency-major spectra.
  const std::int64_t in_chunks = ceil_div(cin, kChannelsPerTask);
  parallel_for(static_cast<std::size_t>(n_images * in_chunks), [&](std::size_t task) {
    const std::int64_t n = task / in_chunks, c0 = (task % in_chunks) * kChannelsPerTask;
    const std::int64_t chunk = std::min(kChannelsPerTask, cin - c0);
    complex* local = local_spectrum(f * chunk);
    pocketfft::r2c<float>(
        {std::size_t(h), std::size_t(w), std::size_t(chunk)},
        {std::ptrdiff_t(w * cin * fsize), std::ptrdiff_t(cin * fsize), std::ptrdiff_t(fsize)},
        {std::ptrdiff_t(wf * chunk * csize), std::ptrdiff_t(chunk * csize), std::ptrdiff_t(csize)},
        axes, pocketfft::FORWARD, x + n * h * w * cin + c0, local, 1.0f);
    for (std::int64_t k = 0; k < f; ++k)
      std::copy_n(local + k * chunk, chunk, spectrum + (k * n_images + n) * cin + c0);
  });

  if (kernel_type == KernelType::kFloat16)
    mix_all(spectrum, static_cast<const _Float16*>(kernel_real),
            static_cast<const _Float16*>(kernel_imag), mixed, s, parallel_for);
  else
    mix_all(spectrum, static_cast<const float*>(kernel_real),
            static_cast<const float*>(kernel_imag), mixed, s, parallel_for);

  const std::int64_t out_chunks = ceil_div(cout, kChannelsPerTask);
  const float scale = 1.0f / static_cast<float>(h * w);
  parallel_for(static_cast<std::size_t>(n_images * out_chunks), [&](std::size_t task) {
    const std::int64_t n = task / out_chunks, c0 = (task % out_chunks) * kChannelsPerTask;
    const std::int64_t chunk = std::min(kChannelsPerTask, cout - c0);
    complex* local = local_spectrum(f * chunk);
    for (std::int64_t k = 0; k < f; ++k)
      std::copy_n(mixed + (k * n_images + n) * cout + c0, chunk, local + k * chunk);
    pocketfft::c2r<float>(
        {std::size_t(h), std::size_t(w), std::size_t(chunk)},
        {std::ptrdiff_t(wf * chunk * csize), std::ptrdiff_t(chunk * csize), std::ptrdiff_t(csize)},
        {std::ptrdiff_t(w * cout * fsize), std::ptrdiff_t(cout * fsize), std::ptrdiff_t(fsize)},
        axes, pocketfft::BACKWARD, local, y + n * h * w * cout + c0, scale);
  });
}

}  // namespace cfconv
