// The native spectral convolution (spectral_conv.hpp), on pocketfft.
//
// Three passes over the batch, each split into independent tasks for the caller's
// parallel-for, with one batch-sized buffer: the half spectrum R [N][H][W/2+1][C],
// C = max(Cin, Cout), which each pass reads and writes in place.
//   1. rows: rfft along the width of a block of image rows, x -> R (pocketfft vectorizes
//      across channels, so each row is read once, in order);
//   2. columns: a task runs the DFT along the height of a few width frequencies of a group
//      of images, reading them from R straight into its own cache-sized buffer, then the
//      channel mixing there (small complex GEMMs, one per height frequency, with those
//      columns' kernel rows; tasks of the same columns run next to each other, so their
//      kernel is fetched from memory about once per call), then the inverse DFT along the
//      height, written straight back into R;
//   3. rows: irfft along the width, R -> y.
// Compared with separate 2D transforms and a mixing pass, the spectrum makes one round trip
// through memory fewer, and the height transforms run on data in cache.
#include "spectral_conv.hpp"

#define POCKETFFT_NO_MULTITHREADING  // the caller's parallel-for runs the tasks
#define POCKETFFT_CACHE_SIZE 16      // plans for the sizes a model uses, kept between calls
#include <pocketfft_hdronly.h>

#include <algorithm>
#include <complex>
#include <vector>

#if defined(__F16C__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace cfconv {
namespace {

using complex = std::complex<float>;
typedef float vfloat __attribute__((vector_size(32)));       // 8 lanes: one AVX register
typedef _Float16 vhalf __attribute__((vector_size(16)));     // 8 half-precision lanes
constexpr std::int64_t kLanes = 8;
typedef std::int32_t vindex __attribute__((vector_size(32)));

// Writes 8 complex values, given as their real and their imaginary lanes, to `target`
// (two interleaving shuffles rather than 16 scalar stores).
inline void store_complex(vfloat real, vfloat imag, complex* target) {
  const vfloat low = __builtin_shuffle(real, imag, vindex{0, 8, 1, 9, 2, 10, 3, 11});
  const vfloat high = __builtin_shuffle(real, imag, vindex{4, 12, 5, 13, 6, 14, 7, 15});
  __builtin_memcpy(target, &low, sizeof(vfloat));
  __builtin_memcpy(target + 4, &high, sizeof(vfloat));
}

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
constexpr std::int64_t kRowsPerTask = 8;
// A column task's buffers (the column of its images' spectra, before and after mixing)
// stay within this, so they and the column's kernel rows stay in a core's L2 cache.
constexpr std::int64_t kColumnBytes = 512 * 1024;

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
      store_complex(acc_real[j][v], acc_imag[j][v], r.out + (n0 + j) * r.out_stride + c0 + v * kLanes);
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

// A column task's share of the spectrum: width frequencies first_column ..
// first_column + columns - 1 of images first_image .. first_image + images - 1. Its buffers
// hold one "lane" [H][C] per (column, image), lane = column offset * images + image offset.
struct ColumnTile {
  std::int64_t first_column, columns, first_image, images;
  std::int64_t lanes() const { return columns * images; }
};

// The tiles' sizes: up to eight images (a multiple of four where possible, so the mixing
// shares each kernel row among four), then as many columns as keep a task's two buffers
// within kColumnBytes. With few images a tile takes several adjacent columns, so the
// kernel is still read in long contiguous runs.
ColumnTile tile_shape(const SpectralShape& s) {
  const std::int64_t lane_bytes = s.height * (s.in_channels + s.out_channels) *
                                  static_cast<std::int64_t>(sizeof(complex));
  const std::int64_t fit = std::max<std::int64_t>(1, kColumnBytes / lane_bytes);
  std::int64_t images = std::min({fit, s.batch, std::int64_t{8}});
  if (images >= 4) images = images / 4 * 4;
  const std::int64_t columns = std::clamp<std::int64_t>(fit / images, 1, s.half_width());
  return ColumnTile{0, columns, 0, images};
}

// out[lane][r][:] = in[lane][r][:] @ K[r][column of the lane] for every lane of the tile
// and height frequency r; in and out are [lanes][H][Cin or Cout]. The loop runs over r
// outside, so each kernel row is read once per tile (the tile's columns' rows are adjacent
// in memory) and shared by the tile's images four at a time.
template <typename K>
void mix_tile(const complex* in, const K* kernel_real, const K* kernel_imag, complex* out,
              const ColumnTile& tile, const SpectralShape& s) {
  const std::int64_t h = s.height, cin = s.in_channels, cout = s.out_channels;
  for (std::int64_t r = 0; r < h; ++r)
    for (std::int64_t c = 0; c < tile.columns; ++c) {
      const std::int64_t k = (r * s.half_width() + tile.first_column + c) * cin * cout;
      for (std::int64_t j0 = 0; j0 < tile.images; j0 += 4) {
        const std::int64_t lane = c * tile.images + j0;
        const FrequencyRows<K> rows{in + (lane * h + r) * cin, kernel_real + k,
                                    kernel_imag + k, out + (lane * h + r) * cout,
                                    cin, cout, h * cin, h * cout};
        mix_up_to_four_images(rows, std::min<std::int64_t>(4, tile.images - j0));
      }
    }
}

// Copies `count` floats to `target`, which the caller does not read again soon, applying
// `activation` on the way: where the CPU has AVX, with non-temporal stores, which spare the
// memory read a cached store makes of each line it fills (one of the three passes over a
// batch-sized buffer otherwise).
void stream_copy(const float* source, float* target, std::int64_t count,
                 Activation activation = Activation::kNone) {
  const bool relu = activation == Activation::kRelu;
  const auto value = [&](std::int64_t i) { return relu ? std::max(source[i], 0.0f) : source[i]; };
  std::int64_t i = 0;
#if defined(__AVX__)
  for (; i < count && reinterpret_cast<std::uintptr_t>(target + i) % 32 != 0; ++i)
    target[i] = value(i);
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= count; i += 8) {
    const __m256 lanes = _mm256_loadu_ps(source + i);
    _mm256_stream_ps(target + i, relu ? _mm256_max_ps(lanes, zero) : lanes);
  }
  _mm_sfence();  // the stores are weakly ordered: make them visible before the task ends
#endif
  for (; i < count; ++i) target[i] = value(i);
}

// A task's own buffer of at least `size` complex values, kept by its thread between calls.
complex* task_buffer(std::size_t size) {
  thread_local std::vector<complex> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

// One row of the half spectrum (Wf values per channel, `channels` apart) of an even number
// `cout` of channels -> the full spectrum `pairs_out` [W][cout / 2] of one complex signal
// per channel pair: Z = X_2p + i X_2p+1, the half spectrum extended by Hermitian symmetry.
// The inverse DFT of Z is x_2p + i x_2p+1, the pair's two real rows interleaved as y stores
// them, so a complex inverse DFT (which pocketfft runs faster than its real inverse) yields
// both. The DC (and Nyquist) terms enter through their real parts, as a real inverse takes
// them.
void pack_channel_pairs(const complex* half_row, std::int64_t channels, std::int64_t cout,
                        std::int64_t width, complex* pairs_out) {
  const std::int64_t pairs = cout / 2, half_width = width / 2 + 1;
  for (std::int64_t k = 0; k < half_width; ++k) {
    const float* a = reinterpret_cast<const float*>(half_row + k * channels);  // (re, im) per channel
    float* z = reinterpret_cast<float*>(pairs_out + k * pairs);
    float* mirror = reinterpret_cast<float*>(pairs_out + (width - k) % width * pairs);
    const bool self_mirrored = k == 0 || 2 * k == width;
    std::int64_t p = 0;
    if (!self_mirrored)
      for (; p + 4 <= pairs; p += 4) {  // four pairs: two vectors [Xr, Xi, Yr, Yi, ...]
        const vfloat u0 = load_lanes(a + 4 * p), u1 = load_lanes(a + 4 * p + 8);
        const vindex swap{3, 2, 1, 0, 7, 6, 5, 4};  // [Yi, Yr, Xi, Xr, ...]
        const vfloat t0 = __builtin_shuffle(u0, swap), t1 = __builtin_shuffle(u1, swap);
        const vfloat to_z{-1, 1, 0, 0, -1, 1, 0, 0}, to_mirror{1, 0, -1, 0, 1, 0, -1, 0};
        // lanes 0, 1 of u + t * to_z: Xr - Yi, Xi + Yr; lanes 0, 2 of u + t * to_mirror:
        // Xr + Yi, Yr - Xi (the conjugates' pair at W - k)
        const vfloat z_lanes = __builtin_shuffle(u0 + t0 * to_z, u1 + t1 * to_z,
                                                 vindex{0, 1, 4, 5, 8, 9, 12, 13});
        const vfloat mirror_lanes = __builtin_shuffle(u0 + t0 * to_mirror, u1 + t1 * to_mirror,
                                                      vindex{0, 2, 4, 6, 8, 10, 12, 14});
        __builtin_memcpy(z + 2 * p, &z_lanes, sizeof(vfloat));
        __builtin_memcpy(mirror + 2 * p, &mirror_lanes, sizeof(vfloat));
      }
    for (; p < pairs; ++p) {
      const float xr = a[4 * p], xi = a[4 * p + 1], yr = a[4 * p + 2], yi = a[4 * p + 3];
      if (self_mirrored) {
        z[2 * p] = xr;
        z[2 * p + 1] = yr;
      } else {
        z[2 * p] = xr - yi;
        z[2 * p + 1] = xi + yr;
        mirror[2 * p] = xr + yi;
        mirror[2 * p + 1] = yr - xi;
      }
    }
  }
}

}  // namespace

std::size_t scratch_floats(const SpectralShape& s) {
  return static_cast<std::size_t>(2 * s.batch * s.frequencies() *
                                  std::max(s.in_channels, s.out_channels));
}

void spectral_conv2d(const float* x, const void* kernel_real, const void* kernel_imag,
                     KernelType kernel_type, Activation activation, float* y,
                     const SpectralShape& s, float* scratch, const ParallelFor& parallel_for) {
  const std::int64_t n_images = s.batch, h = s.height, w = s.width, wf = s.half_width();
  const std::int64_t cin = s.in_channels, cout = s.out_channels;
  const std::int64_t channels = std::max(cin, cout);
  auto* spectrum = reinterpret_cast<complex*>(scratch);  // [N][H][Wf][channels]
  const std::ptrdiff_t fsize = sizeof(float), csize = sizeof(complex);
  const pocketfft::stride_t spectrum_strides{wf * channels * csize, channels * csize, csize};

  const std::int64_t row_blocks = ceil_div(h, kRowsPerTask);
  // Runs rows_task(first, rows) over blocks of image rows: rows first .. first + rows - 1
  // of the batch's N * H (a block never spans two images).
  auto for_each_row_block = [&](const std::function<void(std::int64_t, std::int64_t)>& rows_task) {
    parallel_for(static_cast<std::size_t>(n_images * row_blocks), [&](std::size_t task) {
      const std::int64_t offset = (task % row_blocks) * kRowsPerTask;
      rows_task((task / row_blocks) * h + offset, std::min(kRowsPerTask, h - offset));
    });
  };

  // 1. Rows: rfft along the width, x -> spectrum (through a task buffer in cache).
  for_each_row_block([&](std::int64_t first, std::int64_t rows) {
    complex* block = task_buffer(static_cast<std::size_t>(rows * wf * cin));
    pocketfft::r2c<float>({std::size_t(rows), std::size_t(w), std::size_t(cin)},
                          {w * cin * fsize, cin * fsize, fsize},
                          {wf * cin * csize, cin * csize, csize}, 1, pocketfft::FORWARD,
                          x + first * w * cin, block, 1.0f);
    const std::int64_t run = channels == cin ? rows * wf * cin : cin;  // contiguous in both
    for (std::int64_t i = 0; i < rows * wf * cin; i += run)
      stream_copy(reinterpret_cast<const float*>(block + i),
                  reinterpret_cast<float*>(spectrum + first * wf * channels + i / cin * channels),
                  2 * run);
  });

  // 2. Columns: DFT along the height, channel mixing, inverse DFT along the height.
  // Tasks of the same columns are adjacent, so their kernel rows are fetched about once.
  const ColumnTile shape = tile_shape(s);
  const std::int64_t image_tiles = ceil_div(n_images, shape.images);
  parallel_for(static_cast<std::size_t>(ceil_div(wf, shape.columns) * image_tiles),
               [&](std::size_t task) {
    ColumnTile tile = shape;
    tile.first_column = (task / image_tiles) * shape.columns;
    tile.first_image = (task % image_tiles) * shape.images;
    tile.columns = std::min(shape.columns, wf - tile.first_column);
    tile.images = std::min(shape.images, n_images - tile.first_image);
    const std::int64_t lanes = tile.lanes();
    complex* in = task_buffer(static_cast<std::size_t>(lanes * h * (cin + cout)));
    complex* out = in + lanes * h * cin;
    // The tile's part of the spectrum and of the task's buffers, both seen as
    // [columns][images][H][c] (the buffers' lanes in order), for the DFT along the height
    // (pocketfft gathers each transform's values from the strided spectrum itself).
    complex* corner =
        spectrum + (tile.first_image * h * wf + tile.first_column) * channels;
    const pocketfft::stride_t spectrum_view{channels * csize, h * wf * channels * csize,
                                            wf * channels * csize, csize};
    const auto height_dft = [&](std::int64_t c, const pocketfft::stride_t& from,
                                const pocketfft::stride_t& to, bool forward,
                                const complex* source, complex* target) {
      pocketfft::c2c<float>({std::size_t(tile.columns), std::size_t(tile.images),
                             std::size_t(h), std::size_t(c)},
                            from, to, {2}, forward, source, target, 1.0f);
    };
    const auto buffer_view = [&](std::int64_t c) {
      return pocketfft::stride_t{tile.images * h * c * csize, h * c * csize, c * csize, csize};
    };
    height_dft(cin, spectrum_view, buffer_view(cin), pocketfft::FORWARD, corner, in);
    if (kernel_type == KernelType::kFloat16)
      mix_tile(in, static_cast<const _Float16*>(kernel_real),
               static_cast<const _Float16*>(kernel_imag), out, tile, s);
    else
      mix_tile(in, static_cast<const float*>(kernel_real),
               static_cast<const float*>(kernel_imag), out, tile, s);
    height_dft(cout, buffer_view(cout), spectrum_view, pocketfft::BACKWARD, out, corner);
  });

  // 3. Rows: irfft along the width, spectrum -> y, with the transform pair's 1 / (H W) and
  // the activation, applied while the rows are in cache. An even number of channels runs
  // as complex inverse DFTs of channel pairs (pack_channel_pairs).
  const float scale = 1.0f / static_cast<float>(h * w);
  for_each_row_block([&](std::int64_t first, std::int64_t rows) {
    complex* block = task_buffer(static_cast<std::size_t>(ceil_div(rows * w * cout, 2)));
    const complex* half_rows = spectrum + first * wf * channels;
    if (cout % 2 == 0) {
      const std::int64_t pairs = cout / 2;
      for (std::int64_t row = 0; row < rows; ++row)
        pack_channel_pairs(half_rows + row * wf * channels, channels, cout, w,
                           block + row * w * pairs);
      const pocketfft::stride_t strides{w * pairs * csize, pairs * csize, csize};
      pocketfft::c2c<float>({std::size_t(rows), std::size_t(w), std::size_t(pairs)}, strides,
                            strides, {1}, pocketfft::BACKWARD, block, block, scale);
    } else {
      pocketfft::c2r<float>({std::size_t(rows), std::size_t(w), std::size_t(cout)},
                            spectrum_strides, {w * cout * fsize, cout * fsize, fsize}, 1,
                            pocketfft::BACKWARD, half_rows, reinterpret_cast<float*>(block),
                            scale);
    }
    stream_copy(reinterpret_cast<const float*>(block), y + first * w * cout, rows * w * cout,
                activation);
  });
}

}  // namespace cfconv
