// onnxruntime binding of the native spectral convolution: a custom-op library.
//
// Registers ai.cfconv.SpectralConv2D(x [N, H, W, Cin], kernel_real, kernel_imag
// [W/2+1, H, Cin, Cout], optional kernel_scale [W/2+1, H, Cout]) -> y [N, H, W, Cout] on the
// CPU provider: x and y float32, the kernels float32, float16 or int8 (both the same), int8
// ones with their float32 scale (spectral_conv.hpp). An optional string attribute `activation`
// ("relu", or absent for none) is applied to y as it is written. The work
// runs on the session's own intra-op thread pool (KernelContext_ParallelFor), so the
// session's thread settings hold and nothing else spins up threads. Bad shapes come back
// as an onnxruntime error status, never a crash.
#define ORT_API_MANUAL_INIT
#include <onnxruntime/onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "spectral_conv.hpp"

namespace {

constexpr const char* kDomain = "ai.cfconv";
constexpr const char* kOpName = "SpectralConv2D";
// The op's version (export/names.py NATIVE_OPSET): files that import an older one, whose
// kernel layout differs, fail to load rather than compute with a transposed kernel.
constexpr int kOpVersion = 2;

// Scratch buffers kept between calls, shared by every node of every session in the
// process (nodes run one after another within a call; concurrent calls take their own):
// reusing them spares each call the page faults of fresh memory. At most kKeptBytes stay
// kept, so one huge batch does not pin its buffer for the life of the process.
class ScratchPool {
 public:
  struct Buffer {
    std::unique_ptr<float[]> data;
    std::size_t floats = 0;
  };

  Buffer take(std::size_t floats) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->floats >= floats && (best == free_.end() || it->floats < best->floats)) best = it;
      if (best != free_.end()) {
        Buffer buffer = std::move(*best);
        free_.erase(best);
        kept_bytes_ -= buffer.floats * sizeof(float);
        return buffer;
      }
    }
    return Buffer{std::unique_ptr<float[]>(new float[floats]), floats};
  }

  void give(Buffer buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t bytes = buffer.floats * sizeof(float);
    if (kept_bytes_ + bytes > kKeptBytes) return;  // freed here
    kept_bytes_ += bytes;
    free_.push_back(std::move(buffer));
  }

 private:
  static constexpr std::size_t kKeptBytes = std::size_t(1) << 30;
  std::mutex mutex_;
  std::vector<Buffer> free_;
  std::size_t kept_bytes_ = 0;
};

ScratchPool& scratch_pool() {
  static ScratchPool pool;
  return pool;
}

OrtStatusPtr invalid(const std::string& message) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT,
                                    (std::string(kOpName) + ": " + message).c_str());
}

std::string dims(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The node's `activation` attribute; an unknown name is an error when the session loads.
OrtStatusPtr read_activation(const OrtKernelInfo* info, cfconv::Activation* activation) {
  std::string name;
  try {
    name = Ort::ConstKernelInfo(info).GetAttribute<std::string>("activation");
  } catch (const Ort::Exception&) {  // absent: none
  }
  if (name.empty()) {
    *activation = cfconv::Activation::kNone;
  } else if (name == "relu") {
    *activation = cfconv::Activation::kRelu;
  } else {
    return invalid("activation must be \"relu\" or absent, got \"" + name + "\"");
  }
  return nullptr;
}

struct SpectralConvKernel {
  cfconv::Activation activation = cfconv::Activation::kNone;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    try {
      Ort::KernelContext context(raw_context);
      auto x = context.GetInput(0), kernel_real = context.GetInput(1),
           kernel_imag = context.GetInput(2);
      const auto x_shape = x.GetTensorTypeAndShapeInfo().GetShape();
      const auto k_shape = kernel_real.GetTensorTypeAndShapeInfo().GetShape();
      if (x_shape.size() != 4) return invalid("x must be [N, H, W, Cin], got " + dims(x_shape));
      const cfconv::SpectralShape shape{x_shape[0], x_shape[1], x_shape[2], x_shape[3],
                                        k_shape.size() == 4 ? k_shape[3] : -1};
      const std::vector<int64_t> expected{shape.half_width(), shape.height, shape.in_channels,
                                          shape.out_channels};
      if (k_shape != expected || kernel_imag.GetTensorTypeAndShapeInfo().GetShape() != k_shape)
        return invalid("kernels must both be [W/2+1, H, Cin, Cout] = " + dims(expected) +
                       " for x " + dims(x_shape) + ", got " + dims(k_shape));
      cfconv::SpectralKernel kernel{kernel_real.GetTensorRawData(),
                                    kernel_imag.GetTensorRawData(), cfconv::KernelType::kFloat32};
      const auto element = kernel_real.GetTensorTypeAndShapeInfo().GetElementType();
      if (kernel_imag.GetTensorTypeAndShapeInfo().GetElementType() != element)
        return invalid("kernels must both be float32, both float16 or both int8");
      switch (element) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: break;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: kernel.type = cfconv::KernelType::kFloat16; break;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: kernel.type = cfconv::KernelType::kInt8; break;
        default: return invalid("kernels must both be float32, both float16 or both int8");
      }
      const auto scale = context.GetInputCount() > 3 ? context.GetInput(3) : Ort::ConstValue{};
      const bool has_scale = static_cast<const OrtValue*>(scale) != nullptr;
      if (has_scale != (kernel.type == cfconv::KernelType::kInt8))
        return invalid("int8 kernels need their kernel_scale input, and only they take one");
      if (has_scale) {
        const std::vector<int64_t> scale_shape{shape.half_width(), shape.height, shape.out_channels};
        if (scale.GetTensorTypeAndShapeInfo().GetShape() != scale_shape)
          return invalid("kernel_scale must be [W/2+1, H, Cout] = " + dims(scale_shape) +
                         ", got " + dims(scale.GetTensorTypeAndShapeInfo().GetShape()));
        kernel.scale = scale.GetTensorData<float>();
      }
      auto y = context.GetOutput(0, {shape.batch, shape.height, shape.width, shape.out_channels});
      if (shape.batch * shape.height * shape.width == 0) return nullptr;
      ScratchPool::Buffer buffer = scratch_pool().take(cfconv::scratch_floats(shape));
      cfconv::ParallelFor parallel_for = [&context](std::size_t count, const auto& task) {
        using Task = std::remove_reference_t<decltype(task)>;
        context.ParallelFor(
            [](void* data, std::size_t index) { (*static_cast<Task*>(data))(index); }, count, 0,
            const_cast<void*>(static_cast<const void*>(&task)));
      };
      cfconv::spectral_conv2d(x.GetTensorData<float>(), kernel, activation,
                              y.GetTensorMutableData<float>(), shape, buffer.data.get(),
                              parallel_for);
      scratch_pool().give(std::move(buffer));
      return nullptr;
    } catch (const Ort::Exception& error) {
      return Ort::GetApi().CreateStatus(error.GetOrtErrorCode(), error.what());
    } catch (const std::exception& error) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, error.what());
    }
  }
};

struct SpectralConvOp : Ort::CustomOpBase<SpectralConvOp, SpectralConvKernel, true> {
  SpectralConvOp() { start_ver_ = kOpVersion; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    auto created = std::make_unique<SpectralConvKernel>();
    if (OrtStatusPtr error = read_activation(info, &created->activation)) return error;
    *kernel = created.release();
    return nullptr;
  }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {  // kernels: checked per call
    return index == 0 || index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                    : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot even make a status: the runtime is older
  Ort::InitApi(api);
  try {
    static SpectralConvOp op;
    static Ort::CustomOpDomain domain(kDomain);
    static std::once_flag added;
    std::call_once(added, [] { domain.Add(&op); });
    Ort::UnownedSessionOptions(options).Add(domain);
    return nullptr;
  } catch (const Ort::Exception& error) {
    return api->CreateStatus(error.GetOrtErrorCode(), error.what());
  }
}
