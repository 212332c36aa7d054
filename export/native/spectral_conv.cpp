// The native spectral convolution (spectral_conv.hpp), on pocketfft's transforms.
//
// Three passes over the batch, each split into independent tasks for the caller's
// parallel-for, with one batch-sized buffer: the half spectrum R [N][H][W/2+1][C],
// C = max(Cin, Cout), which each pass reads and writes in place.
//   1. rows: rfft along the width of a block of image rows, x -> R;
//   2. columns: a task runs the DFT along the height of a few width frequencies of a group
//      of images, reading them from R into its own cache-sized buffer, then the channel
//      mixing there (small complex GEMMs, one per frequency, with those columns' kernels,
//      which the kernel's layout [W/2+1][H][Cin][Cout] keeps in one contiguous run per
//      column, a stream the hardware prefetches well; tasks of the same columns run next
//      to each other, so their kernel is fetched from memory about once per call), then the
//      inverse DFT along the height, written back into R;
//   3. rows: irfft along the width, R -> y.
// Compared with separate 2D transforms and a mixing pass, the spectrum makes one round trip
// through memory fewer, and the height transforms run on data in cache. Every transform
// takes up to one SIMD vector of channels at once, as the lanes of pocketfft's vectorized
// transform (strided_dft, width_rfft, width_irfft).
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
typedef std::int8_t vbyte __attribute__((vector_size(8)));   // 8 int8 lanes
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
inline vfloat load_lanes(const std::int8_t* source) {
#if defined(__AVX2__)  // vpmovsxbd + vcvtdq2ps (GCC converts a vector of int8 lane by lane)
  return reinterpret_cast<vfloat>(_mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(source)))));
#else
  vbyte lanes;
  __builtin_memcpy(&lanes, source, sizeof(vbyte));
  return __builtin_convertvector(lanes, vfloat);
#endif
}
constexpr std::int64_t kRowsPerTask = 8;
// A column task's buffers (the column of its images' spectra, before and after mixing)
// stay within this, so they and the column's kernel rows stay in a core's L2 cache.
constexpr std::int64_t kColumnBytes = 512 * 1024;
// The column pass runs at least this many tasks where the spectrum has enough columns, so
// that the threads of a parallel-for finish it together even for a single image.
constexpr std::int64_t kMinColumnTasks = 16;

// One frequency's product out[n][:] = x[n][:] @ K for a run of images: x and out are
// complex rows Cin and Cout long, x_stride and out_stride apart from one image to the
// next; the kernel parts are [Cin][Cout], times scale[Cout] where there is one (int8
// parts: the scale applies to the sums over Cin, once per output).
template <typename K>
struct FrequencyRows {
  const complex* x;
  const K* kernel_real;
  const K* kernel_imag;
  const float* scale;
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
  if (r.scale != nullptr)
    for (int v = 0; v < TV; ++v) {
      const vfloat scale = load_lanes(r.scale + c0 + v * kLanes);
      for (int j = 0; j < TN; ++j) {
        acc_real[j][v] *= scale;
        acc_imag[j][v] *= scale;
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
      r.out[n * r.out_stride + c] = r.scale != nullptr ? acc * r.scale[c] : acc;
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
// within kColumnBytes and still leave kMinColumnTasks tasks.
ColumnTile tile_shape(const SpectralShape& s) {
  const std::int64_t lane_bytes = s.height * (s.in_channels + s.out_channels) *
                                  static_cast<std::int64_t>(sizeof(complex));
  const std::int64_t fit = std::max<std::int64_t>(1, kColumnBytes / lane_bytes);
  std::int64_t images = std::min({fit, s.batch, std::int64_t{8}});
  if (images >= 4) images = images / 4 * 4;
  const std::int64_t column_tiles = ceil_div(kMinColumnTasks, ceil_div(s.batch, images));
  const std::int64_t most = std::max<std::int64_t>(1, s.half_width() / column_tiles);
  const std::int64_t columns = std::clamp<std::int64_t>(fit / images, 1, most);
  return ColumnTile{0, columns, 0, images};
}

// out[lane][r][:] = in[lane][r][:] @ K[column of the lane][r] for every lane of the tile
// and height frequency r; in and out are [lanes][H][Cin or Cout]. Each column's kernel
// [H][Cin][Cout] is read front to back once per tile, and each of its rows shared by the
// tile's images four at a time.
template <typename K>
void mix_tile(const complex* in, const SpectralKernel& kernel, complex* out,
              const ColumnTile& tile, const SpectralShape& s) {
  const std::int64_t h = s.height, cin = s.in_channels, cout = s.out_channels;
  const K* kernel_real = static_cast<const K*>(kernel.real);
  const K* kernel_imag = static_cast<const K*>(kernel.imag);
  for (std::int64_t c = 0; c < tile.columns; ++c)
    for (std::int64_t r = 0; r < h; ++r) {
      const std::int64_t frequency = (tile.first_column + c) * h + r;
      const std::int64_t k = frequency * cin * cout;
      const float* scale = kernel.scale != nullptr ? kernel.scale + frequency * cout : nullptr;
      for (std::int64_t j0 = 0; j0 < tile.images; j0 += 4) {
        const std::int64_t lane = c * tile.images + j0;
        const FrequencyRows<K> rows{in + (lane * h + r) * cin, kernel_real + k,
                                    kernel_imag + k, scale, out + (lane * h + r) * cout,
                                    cin, cout, h * cin, h * cout};
        mix_up_to_four_images(rows, std::min<std::int64_t>(4, tile.images - j0));
      }
    }
}

// Copies `count` floats to `target`, which the caller does not read again soon, applying
// `activation` on the way (a ReLU keeps NaN and -0.0 as std::max(x, 0.0f) does): where
// the library is built for AVX, with non-temporal stores, which spare the memory read a
// cached store makes of each line it fills (one of the three passes over a batch-sized
// buffer otherwise).
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
    // max_ps returns its second operand for NaN and for equal zeros, as std::max(x, 0) does
    _mm256_stream_ps(target + i, relu ? _mm256_max_ps(zero, lanes) : lanes);
  }
  _mm_sfence();  // the stores are weakly ordered: make them visible before the task ends
#endif
  for (; i < count; ++i) target[i] = value(i);
}

// A task's own buffer of at least `size` values of type T, kept by its thread between calls
// (one per type).
template <typename T>
T* task_buffer(std::size_t size) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

// The transforms run on pocketfft's vectorized transforms directly: pocketfft's own strided
// drivers copy each value into and out of their SIMD lanes one float at a time, a cost on
// the order of a short transform's own. Up to kFftLanes channels of one row (or
// column) become one vector transform, the channels pocketfft's lanes (complex values as a
// vector of real and a vector of imaginary parts), moved in and out with vector loads and
// shuffles.
namespace fft = pocketfft::detail;
constexpr std::int64_t kFftLanes = fft::VLEN<float>::val;  // 1 where pocketfft has no SIMD
typedef float fft_lanes __attribute__((vector_size(kFftLanes * sizeof(float))));
using lane_complex = fft::cmplx<fft_lanes>;
typedef std::int32_t fft_index __attribute__((vector_size(sizeof(fft_lanes))));

// Shuffle masks: even and odd floats of two vectors, and their inverse.
constexpr fft_index every_other(int first) {
  fft_index mask{};
  for (int j = 0; j < kFftLanes; ++j) mask[j] = 2 * j + first;
  return mask;
}
constexpr fft_index interleaved(int first) {
  fft_index mask{};
  for (int j = 0; j < kFftLanes; ++j) mask[j] = (first + j) / 2 + (first + j) % 2 * kFftLanes;
  return mask;
}

// buffer[r] = the `count` complex values at source + r * stride, r < rows, as lanes.
void load_channel_lanes(const complex* source, std::int64_t stride, std::int64_t count,
                        std::int64_t rows, lane_complex* buffer) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* values = reinterpret_cast<const float*>(source + r * stride);
    if (count == kFftLanes) {
      fft_lanes low, high;
      __builtin_memcpy(&low, values, sizeof(fft_lanes));
      __builtin_memcpy(&high, values + kFftLanes, sizeof(fft_lanes));
      buffer[r].r = __builtin_shuffle(low, high, every_other(0));
      buffer[r].i = __builtin_shuffle(low, high, every_other(1));
    } else {
      buffer[r].r = fft_lanes{};
      buffer[r].i = fft_lanes{};
      for (std::int64_t j = 0; j < count; ++j) {
        buffer[r].r[j] = values[2 * j];
        buffer[r].i[j] = values[2 * j + 1];
      }
    }
  }
}

// Lanes 0 .. count - 1 of (real, imag) as `count` complex values at `target`.
inline void store_complex_lanes(fft_lanes real, fft_lanes imag, std::int64_t count,
                                complex* target) {
  float* values = reinterpret_cast<float*>(target);
  if (count == kFftLanes) {
    const fft_lanes low = __builtin_shuffle(real, imag, interleaved(0));
    const fft_lanes high = __builtin_shuffle(real, imag, interleaved(kFftLanes));
    __builtin_memcpy(values, &low, sizeof(fft_lanes));
    __builtin_memcpy(values + kFftLanes, &high, sizeof(fft_lanes));
  } else {
    for (std::int64_t j = 0; j < count; ++j) {
      values[2 * j] = real[j];
      values[2 * j + 1] = imag[j];
    }
  }
}

// The inverse of load_channel_lanes: lanes 0 .. count - 1 of buffer[r] to target + r * stride.
void store_channel_lanes(const lane_complex* buffer, std::int64_t rows, std::int64_t count,
                         complex* target, std::int64_t stride) {
  for (std::int64_t r = 0; r < rows; ++r)
    store_complex_lanes(buffer[r].r, buffer[r].i, count, target + r * stride);
}

// The complex DFT (`plan`, of length L) of `channels` signals: from source (element r of
// signal c at source + r * source_stride + c) to target (likewise), through `buffer`
// (L values).
void strided_dft(const fft::pocketfft_c<float>& plan, const complex* source,
                 std::int64_t source_stride, complex* target, std::int64_t target_stride,
                 std::int64_t channels, bool forward, lane_complex* buffer) {
  const auto length = static_cast<std::int64_t>(plan.length());
  for (std::int64_t c0 = 0; c0 < channels; c0 += kFftLanes) {
    const std::int64_t count = std::min(kFftLanes, channels - c0);
    load_channel_lanes(source + c0, source_stride, count, length, buffer);
    plan.exec(buffer, 1.0f, forward);
    store_channel_lanes(buffer, length, count, target + c0, target_stride);
  }
}

// The real DFT along the width (`plan`, of length W) of one row of x (W pixels of
// `channels` channels) into its half spectrum `target` [W/2+1][channels], through `buffer`
// (W vectors; pocketfft's real transform leaves its result as r0, r1, i1, r2, i2, ...).
void width_rfft(const fft::pocketfft_r<float>& plan, const float* row, std::int64_t channels,
                complex* target, fft_lanes* buffer) {
  const auto width = static_cast<std::int64_t>(plan.length());
  const std::int64_t half_width = width / 2 + 1;
  for (std::int64_t c0 = 0; c0 < channels; c0 += kFftLanes) {
    const std::int64_t count = std::min(kFftLanes, channels - c0);
    for (std::int64_t w = 0; w < width; ++w) {
      const float* values = row + w * channels + c0;
      if (count == kFftLanes) {
        __builtin_memcpy(&buffer[w], values, sizeof(fft_lanes));
      } else {
        buffer[w] = fft_lanes{};
        for (std::int64_t j = 0; j < count; ++j) buffer[w][j] = values[j];
      }
    }
    plan.exec(buffer, 1.0f, true);
    const fft_lanes zero{};
    store_complex_lanes(buffer[0], zero, count, target + c0);
    for (std::int64_t k = 1; k < half_width; ++k)
      store_complex_lanes(buffer[2 * k - 1], 2 * k < width ? buffer[2 * k] : zero, count,
                          target + k * channels + c0);
  }
}

// The inverse of width_rfft, times `scale`: one row of the half spectrum (W/2+1 values of
// `channels` channels, `stride` apart from one frequency to the next) into W pixels of
// `channels` channels at `row`. The DC (and Nyquist) terms enter through their real parts,
// as numpy's and TensorFlow's irfft take them.
void width_irfft(const fft::pocketfft_r<float>& plan, const complex* half_row,
                 std::int64_t stride, std::int64_t channels, float scale, float* row,
                 fft_lanes* buffer) {
  const auto width = static_cast<std::int64_t>(plan.length());
  const std::int64_t half_width = width / 2 + 1;
  for (std::int64_t c0 = 0; c0 < channels; c0 += kFftLanes) {
    const std::int64_t count = std::min(kFftLanes, channels - c0);
    lane_complex value;
    load_channel_lanes(half_row + c0, 0, count, 1, &value);
    buffer[0] = value.r;
    for (std::int64_t k = 1; k < half_width; ++k) {
      load_channel_lanes(half_row + k * stride + c0, 0, count, 1, &value);
      buffer[2 * k - 1] = value.r;
      if (2 * k < width) buffer[2 * k] = value.i;
    }
    plan.exec(buffer, scale, false);
    for (std::int64_t w = 0; w < width; ++w) {
      float* values = row + w * channels + c0;
      if (count == kFftLanes)
        __builtin_memcpy(values, &buffer[w], sizeof(fft_lanes));
      else
        for (std::int64_t j = 0; j < count; ++j) values[j] = buffer[w][j];
    }
  }
}

}  // namespace

std::size_t scratch_floats(const SpectralShape& s) {
  return static_cast<std::size_t>(2 * s.batch * s.frequencies() *
                                  std::max(s.in_channels, s.out_channels));
}

void spectral_conv2d(const float* x, const SpectralKernel& kernel, Activation activation, float* y,
                     const SpectralShape& s, float* scratch, const ParallelFor& parallel_for) {
  const std::int64_t n_images = s.batch, h = s.height, w = s.width, wf = s.half_width();
  const std::int64_t cin = s.in_channels, cout = s.out_channels;
  const std::int64_t channels = std::max(cin, cout);
  auto* spectrum = reinterpret_cast<complex*>(scratch);  // [N][H][Wf][channels]
  // pocketfft's plans for the two lengths, shared read-only by the tasks
  const auto width_plan = fft::get_plan<fft::pocketfft_r<float>>(static_cast<std::size_t>(w));
  const auto height_plan = fft::get_plan<fft::pocketfft_c<float>>(static_cast<std::size_t>(h));

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
    complex* block = task_buffer<complex>(static_cast<std::size_t>(rows * wf * cin));
    fft_lanes* vectors = task_buffer<fft_lanes>(static_cast<std::size_t>(w));
    for (std::int64_t row = 0; row < rows; ++row)
      width_rfft(*width_plan, x + (first + row) * w * cin, cin, block + row * wf * cin, vectors);
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
    complex* in = task_buffer<complex>(static_cast<std::size_t>(lanes * h * (cin + cout)));
    complex* out = in + lanes * h * cin;
    lane_complex* vectors = task_buffer<lane_complex>(static_cast<std::size_t>(h));
    // Runs dft(lane, the lane's column of the spectrum: its row r at r * wf * channels) for
    // each lane of the tile, whose buffers hold [H][c] per lane.
    const auto for_each_lane = [&](auto&& dft) {
      for (std::int64_t c = 0; c < tile.columns; ++c)
        for (std::int64_t j = 0; j < tile.images; ++j)
          dft(c * tile.images + j,
              spectrum + ((tile.first_image + j) * h * wf + tile.first_column + c) * channels);
    };
    for_each_lane([&](std::int64_t lane, complex* column) {
      strided_dft(*height_plan, column, wf * channels, in + lane * h * cin, cin, cin,
                  pocketfft::FORWARD, vectors);
    });
    switch (kernel.type) {
      case KernelType::kFloat32: mix_tile<float>(in, kernel, out, tile, s); break;
      case KernelType::kFloat16: mix_tile<_Float16>(in, kernel, out, tile, s); break;
      case KernelType::kInt8: mix_tile<std::int8_t>(in, kernel, out, tile, s); break;
    }
    for_each_lane([&](std::int64_t lane, complex* column) {
      strided_dft(*height_plan, out + lane * h * cout, cout, column, wf * channels, cout,
                  pocketfft::BACKWARD, vectors);
    });
  });

  // 3. Rows: irfft along the width, spectrum -> y, with the transform pair's 1 / (H W) and
  // the activation, applied while the rows are in cache.
  const float scale = 1.0f / static_cast<float>(h * w);
  for_each_row_block([&](std::int64_t first, std::int64_t rows) {
    float* block = reinterpret_cast<float*>(
        task_buffer<complex>(static_cast<std::size_t>(ceil_div(rows * w * cout, 2))));
    fft_lanes* vectors = task_buffer<fft_lanes>(static_cast<std::size_t>(w));
    for (std::int64_t row = 0; row < rows; ++row)
      width_irfft(*width_plan, spectrum + (first + row) * wf * channels, channels, cout, scale,
                  block + row * w * cout, vectors);
    stream_copy(block, y + first * w * cout, rows * w * cout, activation);
  });
}

}  // namespace cfconv
