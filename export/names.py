"""Names shared by the exporters and the server: files, tensors, metadata keys.

Imports nothing, so the server (which reads exported models with onnxruntime alone)
can use them without loading TensorFlow.
"""

ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"  # ONNX external data, for models over 2 GB
SAVEDMODEL_FILE = "saved_model.pb"
METADATA_FILE = "assets.extra/cfconv.json"  # inside a SavedModel folder
TRITON_CONFIG_FILE = "config.pbtxt"
SIGNATURE_NAME = "serving_default"  # the SavedModel signature TF Serving calls
LABELS_FILE = "labels.txt"

# The classifier extras an export adds to a classifier's own outputs.
PROBABILITIES = "probabilities"
CLASS_INDEX = "class_index"

# Keys of the model metadata (ONNX metadata_props, the SavedModel's METADATA_FILE).
CLASS_NAMES_KEY = "class_names"
PREPROCESSING_KEY = "preprocessing"
LOWERING_KEY = "lowering"
KERNEL_STORAGE_KEY = "kernel_storage"  # compact kernels: rank, dtype, each layer's error

# The native lowering's custom op (export/native), as the ONNX files name it.
NATIVE_DOMAIN = "ai.cfconv"
NATIVE_OP = "SpectralConv2D"
NATIVE_ACTIVATION = "activation"  # the op's optional attribute: "relu" or absent
# The op's version, which the library registers (export/native/onnxruntime_op.cpp) and the
# files import: 2 takes the kernel [W/2+1, H, Cin, Cout] and int8 kernels with scales; a
# file of version 1 (kernel [H, W/2+1, Cin, Cout]) fails to load instead of computing
# with a transposed kernel.
NATIVE_OPSET = 2
