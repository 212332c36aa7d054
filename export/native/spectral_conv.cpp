// The native spectral convolution (spectral_conv.hpp), on pocketfft.
//
// Three passes over the batch, each split into independent tasks for the caller's
// parallel-for, with one batch-sized buffer: the half spectrum R [N][H][W/2+1][C],
// C = max(Cin, Cout), which each pass reads and writes in place.
//   1. rows: rfft along the width of a block of image rows, x -> R (pocketfft vectorizes
//      across channels, so each row is read once, in order);
//   2. columns: a task takes one width frequency of a group of images into its own
//      cache-sized buffers and runs there the DFT along the height, the channel mixing
//      (small complex GEMMs, one per height frequency, with that column's kernel rows;
//      tasks of the same column run next to each other, so its kernel is fetched from
//      memory about once per call) and the inverse DFT along the height, then writes R;
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

// Copies `count` floats to `target`, which the caller does not read again soon: where the
// CPU has AVX, with non-temporal stores, which spare the memory read a cached store makes
// of each line it fills (one of the three passes over a batch-sized buffer otherwise).
void stream_copy(const float* source, float* target, std::int64_t count) {
#if defined(__AVX__)
  std::int64_t i = 0;
  for (; i < count && reinterpret_cast<std::uintptr_t>(target + i) % 32 != 0; ++i)
    target[i] = source[i];
  for (; i + 8 <= count; i += 8) _mm256_stream_ps(target + i, _mm256_loadu_ps(source + i));
  for (; i < count; ++i) target[i] = source[i];
  _mm_sfence();  // the stores are weakly ordered: make them visible before the task ends
#else
  std::copy_n(source, count, target);
#endif
}

// A task's own buffer of at least `size` complex values, kept by its thread between calls.
complex* task_buffer(std::size_t size) {
  thread_local std::vector<complex> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
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
    // Calls copy(lane, row of the spectrum) for each lane and height frequency.
    const auto for_each_lane_row = [&](auto&& copy) {
      for (std::int64_t c = 0; c < tile.columns; ++c)
        for (std::int64_t j = 0; j < tile.images; ++j)
          for (std::int64_t r = 0; r < h; ++r)
            copy((c * tile.images + j) * h + r,
                 spectrum + (((tile.first_image + j) * h + r) * wf + tile.first_column + c) *
                                channels);
    };
    const auto height_dft = [&](complex* lanes_data, std::int64_t c, bool forward) {
      const pocketfft::stride_t strides{h * c * csize, c * csize, csize};
      pocketfft::c2c<float>({std::size_t(lanes), std::size_t(h), std::size_t(c)}, strides,
                            strides, {1}, forward, lanes_data, lanes_data, 1.0f);
    };
    for_each_lane_row([&](std::int64_t row, complex* source) {
      std::copy_n(source, cin, in + row * cin);
    });
    height_dft(in, cin, pocketfft::FORWARD);
    if (kernel_type == KernelType::kFloat16)
      mix_tile(in, static_cast<const _Float16*>(kernel_real),
               static_cast<const _Float16*>(kernel_imag), out, tile, s);
    else
      mix_tile(in, static_cast<const float*>(kernel_real),
               static_cast<const float*>(kernel_imag), out, tile, s);
    height_dft(out, cout, pocketfft::BACKWARD);
    for_each_lane_row([&](std::int64_t row, complex* target) {
      std::copy_n(out + row * cout, cout, target);
    });
  });

  // 3. Rows: irfft along the width, spectrum -> y, with the transform pair's 1 / (H W) and
  // the activation, applied while the rows are in cache.
  const float scale = 1.0f / static_cast<float>(h * w);
  for_each_row_block([&](std::int64_t first, std::int64_t rows) {
    float* block = reinterpret_cast<float*>(
        task_buffer(static_cast<std::size_t>(ceil_div(rows * w * cout, 2))));
    pocketfft::c2r<float>({std::size_t(rows), std::size_t(w), std::size_t(cout)},
                          spectrum_strides, {w * cout * fsize, cout * fsize, fsize}, 1,
                          pocketfft::BACKWARD, spectrum + first * wf * channels, block, scale);
    if (activation == Activation::kRelu)
      for (std::int64_t i = 0; i < rows * w * cout; ++i) block[i] = std::max(block[i], 0.0f);
    stream_copy(block, y + first * w * cout, rows * w * cout);
  });
}

}  // namespace cfconv
