// The native spectral convolution (spectral_conv.hpp), on pocketfft.
//
// Three passes over the batch, each split into independent tasks for the caller's
// parallel-for:
//   1. rfft2 of each image, 8 channels per task (pocketfft vectorizes across them), into
//      the spectra S[n][f][c];
//   2. channel mixing per frequency, T[n][f][:] = S[n][f][:] @ K[f], small complex GEMMs:
//      a task takes a block of frequencies and runs through the batch four images at a
//      time, so the block's kernel (read once per call from memory) stays in L2 and each
//      image's rows of the block are read in order;
//   3. irfft2 of each image's T back to y, 8 channels per task.
#include "spectral_conv.hpp"

#define POCKETFFT_NO_MULTITHREADING  // the caller's parallel-for runs the tasks
#define POCKETFFT_CACHE_SIZE 16      // plans for the sizes a model uses, kept between calls
#include <pocketfft_hdronly.h>

#include <algorithm>
#include <complex>

#if defined(__F16C__)
#include <immintrin.h>
#endif

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
#if defined(__F16C__)  // one vcvtph2ps (GCC converts a vector of _Float16 lane by lane)
  return reinterpret_cast<vfloat>(
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(source))));
#else
  vhalf lanes;
  __builtin_memcpy(&lanes, source, sizeof(vhalf));
  return __builtin_convertvector(lanes, vfloat);
#endif
}
constexpr std::int64_t kChannelsPerTask = 8;  // pocketfft's float vector width on AVX
constexpr std::int64_t kFrequenciesPerTask = 32;

// One frequency's product out[n][:] = x[n][:] @ K for a run of images: x and out are
// complex rows Cin and Cout long, x_stride and out_stride apart from one image to the
// next; the kernel parts are [Cin][Cout].
template <typename K>
struct FrequencyRows {
  const complex* x;
  const K* kernel_real;
  const K* kernel_imag;
  complex* out;
  std::int64_t cin, cout, x_stride, out_stride;
};

// Images n0 .. n0 + TN - 1, output channels c0 .. c0 + 8 * TV - 1. TN images share each
// load of a kernel row; the 2 * TN * TV accumulators stay in registers.
template <int TN, int TV, typename K>
void mix_block(const FrequencyRows<K>& r, std::int64_t n0, std::int64_t c0) {
  vfloat acc_real[TN][TV] = {}, acc_imag[TN][TV] = {};
  for (std::int64_t i = 0; i < r.cin; ++i) {
    vfloat kr[TV], ki[TV];
    for (int v = 0; v < TV; ++v) {
      kr[v] = load_lanes(r.kernel_real + i * r.cout + c0 + v * kLanes);
      ki[v] = load_lanes(r.kernel_imag + i * r.cout + c0 + v * kLanes);
    }
    for (int j = 0; j < TN; ++j) {
      const complex value = r.x[(n0 + j) * r.x_stride + i];
      const float xr = value.real(), xi = value.imag();
      for (int v = 0; v < TV; ++v) {
        acc_real[j][v] += xr * kr[v] - xi * ki[v];
        acc_imag[j][v] += xr * ki[v] + xi * kr[v];
      }
    }
  }
  for (int j = 0; j < TN; ++j)
    for (int v = 0; v < TV; ++v)
      for (int lane = 0; lane < kLanes; ++lane)
        r.out[(n0 + j) * r.out_stride + c0 + v * kLanes + lane] =
            complex(acc_real[j][v][lane], acc_imag[j][v][lane]);
}

// Images n0 .. n0 + TN - 1, every output channel: blocks of 8 * TV channels, then of 8,
// then the rest one by one.
template <int TN, int TV, typename K>
void mix_images(const FrequencyRows<K>& r, std::int64_t n0) {
  std::int64_t c0 = 0;
  for (; c0 + TV * kLanes <= r.cout; c0 += TV * kLanes) mix_block<TN, TV>(r, n0, c0);
  for (; c0 + kLanes <= r.cout; c0 += kLanes) mix_block<TN, 1>(r, n0, c0);
  for (std::int64_t n = n0; n < n0 + TN; ++n)
    for (std::int64_t c = c0; c < r.cout; ++c) {
      complex acc = 0;
      for (std::int64_t i = 0; i < r.cin; ++i)
        acc += r.x[n * r.x_stride + i] *
               complex(static_cast<float>(r.kernel_real[i * r.cout + c]),
                       static_cast<float>(r.kernel_imag[i * r.cout + c]));
      r.out[n * r.out_stride + c] = acc;
    }
}

// Images 0 .. count - 1 (at most 4): one image reads four vectors of each kernel row.
template <typename K>
void mix_up_to_four_images(const FrequencyRows<K>& r, std::int64_t count) {
  switch (count) {
    case 4: return mix_images<4, 1>(r, 0);
    case 3: return mix_images<3, 1>(r, 0);
    case 2: return mix_images<2, 2>(r, 0);
    case 1: return mix_images<1, 4>(r, 0);
  }
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// T[n][f] = S[n][f] @ K[f] for every image and frequency. A task takes a block of
// frequencies and goes through the batch four images at a time.
template <typename K>
void mix_all(const complex* spectrum, const K* kernel_real, const K* kernel_imag,
             complex* mixed, const SpectralShape& s, const ParallelFor& parallel_for) {
  const std::int64_t n_images = s.batch, cin = s.in_channels, cout = s.out_channels;
  const std::int64_t f = s.frequencies();
  parallel_for(static_cast<std::size_t>(ceil_div(f, kFrequenciesPerTask)), [&](std::size_t task) {
    const std::int64_t first = task * kFrequenciesPerTask;
    const std::int64_t last = std::min(f, first + kFrequenciesPerTask);
    for (std::int64_t n0 = 0; n0 < n_images; n0 += 4)
      for (std::int64_t k = first; k < last; ++k) {
        const FrequencyRows<K> rows{spectrum + (n0 * f + k) * cin,
                                    kernel_real + k * cin * cout,
                                    kernel_imag + k * cin * cout,
                                    mixed + (n0 * f + k) * cout,
                                    cin,
                                    cout,
                                    f * cin,
                                    f * cout};
        mix_up_to_four_images(rows, std::min<std::int64_t>(4, n_images - n0));
      }
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
  auto* spectrum = reinterpret_cast<complex*>(scratch);  // [N][F][Cin]
  complex* mixed = spectrum + f * n_images * cin;          // [N][F][Cout]
  const std::size_t fsize = sizeof(float), csize = sizeof(complex);
  const pocketfft::shape_t axes{0, 1};

  const std::int64_t in_chunks = ceil_div(cin, kChannelsPerTask);
  parallel_for(static_cast<std::size_t>(n_images * in_chunks), [&](std::size_t task) {
    const std::int64_t n = task / in_chunks, c0 = (task % in_chunks) * kChannelsPerTask;
    const std::int64_t chunk = std::min(kChannelsPerTask, cin - c0);
    pocketfft::r2c<float>(
        {std::size_t(h), std::size_t(w), std::size_t(chunk)},
        {std::ptrdiff_t(w * cin * fsize), std::ptrdiff_t(cin * fsize), std::ptrdiff_t(fsize)},
        {std::ptrdiff_t(wf * cin * csize), std::ptrdiff_t(cin * csize), std::ptrdiff_t(csize)},
        axes, pocketfft::FORWARD, x + n * h * w * cin + c0, spectrum + n * f * cin + c0, 1.0f);
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
    pocketfft::c2r<float>(
        {std::size_t(h), std::size_t(w), std::size_t(chunk)},
        {std::ptrdiff_t(wf * cout * csize), std::ptrdiff_t(cout * csize), std::ptrdiff_t(csize)},
        {std::ptrdiff_t(w * cout * fsize), std::ptrdiff_t(cout * fsize), std::ptrdiff_t(fsize)},
        axes, pocketfft::BACKWARD, mixed + n * f * cout + c0, y + n * h * w * cout + c0, scale);
  });
}

}  // namespace cfconv
