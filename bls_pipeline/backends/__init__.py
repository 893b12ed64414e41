"""Triton's own DALI and ONNX Runtime backends, built from pinned sources for the
``tritonserver`` of the ``nvidia-pytriton`` wheel (which ships only the Python backend).

    from bls_pipeline.backends import BuildOptions, build_backends, native_backends_dir

    result = build_backends(BuildOptions(sources=default_sources()))
    native_backends_dir()   # -> .../site-<digest>, with dali/ and onnxruntime/; None if not built

The build facts (branches, offline configure, CUDA headers from PyPI wheels without nvcc,
library renames, the ONNX Runtime symbol-version trap) are in
``../shared/vendor/triton-backends/SOURCES.md``; :mod:`.recipe` lists what our build changes.
"""

from bls_pipeline.backends.build import (
    BACKENDS,
    BuildOptions,
    BuildResult,
    build_backends,
    default_cache,
    default_sources,
    native_backends_dir,
)

__all__ = [
    "BACKENDS",
    "BuildOptions",
    "BuildResult",
    "build_backends",
    "default_cache",
    "default_sources",
    "native_backends_dir",
]
