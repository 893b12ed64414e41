"""What our build changes in the pinned sources, and the CMake arguments of each backend.

Every change is an exact text edit that must match once: a source that moved on fails the
build with the file named, instead of building something else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bls_pipeline.errors import BackendBuildError
from bls_pipeline.layout import ORT_ALLOW_SPINNING

FILES = Path(__file__).with_name("files")


@dataclass(frozen=True)
class SourceEdit:
    """Replace ``old`` by ``new`` in ``path`` (relative to the source tree), exactly once."""

    path: str
    old: str
    new: str
    why: str


@dataclass(frozen=True)
class AddedFile:
    """Copy ``files/<name>`` into the source tree as ``dest``."""

    name: str
    dest: str


_GATHER_KERNEL = """  add_library(
    kernel_library_new
    src/kernel.cu src/kernel.h
  )

  enable_language(CUDA)
  set_target_properties(kernel_library_new PROPERTIES LANGUAGE CUDA)
  set_target_properties(kernel_library_new PROPERTIES CUDA_ARCHITECTURES "53;60-real;62-real;70-real;72-real;75-real;80-real;86-real;89-real;90-real")
  set_target_properties(kernel_library_new PROPERTIES POSITION_INDEPENDENT_CODE ON)
  set_target_properties(kernel_library_new PROPERTIES LINKER_LANGUAGE CUDA)
  target_compile_features(kernel_library_new PUBLIC cxx_std_${TRITON_MIN_CXX_STANDARD})
  set_target_properties(kernel_library_new PROPERTIES CUDA_RESOLVE_DEVICE_SYMBOLS ON)
"""

_GATHER_STAND_IN = """  # bls-pipeline: a C++ stand-in for the CUDA gather kernel (no nvcc needed).
  add_library(kernel_library_new STATIC src/bls_gather_kernel.cc)
  set_target_properties(kernel_library_new PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_include_directories(kernel_library_new PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(kernel_library_new PRIVATE CUDA::cudart)
"""

_ORT_OPTIMIZATION = """  THROW_IF_BACKEND_MODEL_ORT_ERROR(
      ort_api->SetSessionGraphOptimizationLevel(soptions, optimization_level));
"""

# ONNX Runtime's intra-op threads spin while idle by default; the r24.10 backend has no
# parameter to stop it, which cost 25-45 % more CPU per request than the Python-hosted model.
ORT_SESSION_CONFIG_KEYS = (ORT_ALLOW_SPINNING, "session.inter_op.allow_spinning")

_ORT_SESSION_CONFIG = (
    _ORT_OPTIMIZATION
    + """
  // bls-pipeline: pass these ONNX Runtime session config entries through from the model
  // parameters (e.g. session.intra_op.allow_spinning = "0": idle threads sleep, not spin).
  {
    triton::common::TritonJson::Value params;
    if (ModelConfig().Find("parameters", &params)) {
      for (const char* key : {"""
    + ", ".join(f'"{key}"' for key in ORT_SESSION_CONFIG_KEYS)
    + """}) {
        std::string value;
        THROW_IF_BACKEND_MODEL_ERROR(
            TryParseModelStringParameter(params, key, &value, ""));
        if (!value.empty()) {
          THROW_IF_BACKEND_MODEL_ORT_ERROR(
              ort_api->AddSessionConfigEntry(soptions, key, value.c_str()));
        }
      }
    }
  }
"""
)

# The DALI backend scatters the outputs of a batch of several requests with MemCopy on its copy
# stream; a CPU-only pipeline has none (null), which DALI's copyH2H takes for CUDA's default
# stream: every multi-request batch then failed with cudaErrorInsufficientDriver on a
# machine without CUDA (found by the benchmark's native ensemble).
_DALI_H2H = """    copyH2H(dst_c, src_c, size, stream);
"""
_DALI_H2H_HOST = """    // bls-pipeline: no stream (a CPU-only pipeline) means a plain host copy.
    if (stream)
      copyH2H(dst_c, src_c, size, stream);
    else
      std::memcpy(dst_c, src_c, size);
"""

EDITS: tuple[SourceEdit, ...] = (
    SourceEdit(
        "common/src/CMakeLists.txt", "add_subdirectory(test)", "", "common's tests need GTest; they are not built"
    ),
    SourceEdit(
        "backend/CMakeLists.txt", _GATHER_KERNEL, _GATHER_STAND_IN, "GPU-enabled builds without nvcc (SOURCES.md)"
    ),
    SourceEdit(
        "onnxruntime_backend/src/onnxruntime.cc",
        _ORT_OPTIMIZATION,
        _ORT_SESSION_CONFIG,
        "stop idle ONNX Runtime threads from spinning (session.intra_op.allow_spinning)",
    ),
    SourceEdit(
        "dali_backend/src/dali_executor/io_buffer.cc",
        _DALI_H2H,
        _DALI_H2H_HOST,
        "host-to-host copies of a CPU-only pipeline without a CUDA stream",
    ),
)

ADDED_FILES: tuple[AddedFile, ...] = (
    AddedFile("gather_kernel.cc", "backend/src/bls_gather_kernel.cc"),
    AddedFile("Catch2.cmake", "dali_backend/extern/Catch2/CMakeLists.txt"),
    AddedFile("RapidJSONConfig.cmake", "rapidjson/RapidJSONConfig.cmake"),
)


def apply_edit(tree: Path, edit: SourceEdit) -> None:
    """Apply one edit; the text to replace must occur exactly once."""
    path = tree / edit.path
    text = path.read_text()
    count = text.count(edit.old)
    if count != 1:
        raise BackendBuildError(
            f"cannot patch {edit.path} ({edit.why}): the text to replace occurs {count} times, expected once"
        )
    path.write_text(text.replace(edit.old, edit.new))


def prepare_tree(tree: Path) -> None:
    """Apply every edit and add our files to an unpacked source tree."""
    for edit in EDITS:
        apply_edit(tree, edit)
    for added in ADDED_FILES:
        dest = tree / added.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((FILES / added.name).read_bytes())


def recipe_digest() -> str:
    """A digest of everything in this module and ``files/``: a changed recipe rebuilds."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(FILES.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def cmake_args(
    backend: str, tree: Path, gpu: bool, cuda_root: Path, ort_include: Path, ort_stub_dir: Path
) -> list[str]:
    """The configure arguments of one backend: offline, against the unpacked sources."""
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DTRITON_ENABLE_GPU={'ON' if gpu else 'OFF'}",
        "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-COMMON={tree / 'common'}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-CORE={tree / 'core'}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND={tree / 'backend'}",
        f"-DRapidJSON_DIR={tree / 'rapidjson'}",
        # Its version.txt makes FindCUDAToolkit accept it without nvcc, and prefer it to an
        # nvcc on PATH.
        f"-DCUDAToolkit_ROOT={cuda_root}",
    ]
    if backend == "dali":
        args += ["-DTRITON_DALI_SKIP_DOWNLOAD=ON"]
        if not gpu:
            args += [f"-DCMAKE_PROJECT_INCLUDE={FILES / 'find_cuda.cmake'}"]
    elif backend == "onnxruntime":
        args += [f"-DTRITON_ONNXRUNTIME_INCLUDE_PATHS={ort_include}", f"-DTRITON_ONNXRUNTIME_LIB_PATHS={ort_stub_dir}"]
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return args


# The CMake target of each backend and the library it writes.
TARGETS = {"dali": "triton-dali-backend", "onnxruntime": "triton-onnxruntime-backend"}
LIBRARIES = {"dali": "libtriton_dali.so", "onnxruntime": "libtriton_onnxruntime.so"}
SOURCE_DIRS = {"dali": "dali_backend", "onnxruntime": "onnxruntime_backend"}
