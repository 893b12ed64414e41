"""The container repository (``--target triton``) ships only what the classifier imports.

The NVIDIA Triton container has no ``bls_pipeline``: the build copies the classifier's modules
beside its ``model.py``. This lists that copy, then imports the classifier from the copy alone
(with the Python backend's real ``triton_python_backend_utils``), in a fresh interpreter:
everything it loads of the package comes from the copy, and none of torch, DALI, the Triton
client or protobuf is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import RepositorySpec, write_repository
from bls_pipeline.server.launcher import pytriton_root

EXPECTED = [
    "__init__.py",
    "contract.py",
    "errors.py",
    "request/__init__.py",
    "request/faults.py",
    "request/image_formats.py",
    "request/image_header.py",
    "request/orchestration.py",
    "request/padding.py",
    "request/postprocess.py",
    "request/submodels.py",
    "runtime/__init__.py",
    "runtime/device.py",
    "serving/__init__.py",
    "serving/bls.py",
    "serving/metrics.py",
    "serving/models.py",
]

PROBE = """
import json, sys
sys.path[:0] = sys.argv[1:3]
from bls_pipeline.serving.models import ClassifierModel
print(json.dumps({name: getattr(module, "__file__", None) for name, module in sys.modules.items()}))
"""


def _container_copy(tmp_path: Path) -> Path:
    spec = RepositorySpec(target="triton", device="gpu", runtime=mc.ONNXRUNTIME, max_batch_size=4, num_classes=2)
    output = tmp_path / "repository"
    output.mkdir()
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    write_repository(output, spec, labels=["a", "b"], network_files=[onnx])
    return output / mc.CLASSIFIER / "1"


def test_the_container_copy_holds_only_the_classifiers_modules(tmp_path):
    version = _container_copy(tmp_path)

    copied = sorted(
        path.relative_to(version / "bls_pipeline").as_posix()
        for path in (version / "bls_pipeline").rglob("*")
        if path.is_file()
    )
    assert copied == EXPECTED


def test_the_classifier_imports_from_the_copy_alone(tmp_path):
    version = _container_copy(tmp_path)
    stub_utils = pytriton_root() / "backends" / "python"

    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(version), str(stub_utils)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)

    package = {
        name: path for name, path in modules.items() if name == "bls_pipeline" or name.startswith("bls_pipeline.")
    }
    assert package and all(Path(path).is_relative_to(version / "bls_pipeline") for path in package.values())
    assert sorted(Path(path).relative_to(version / "bls_pipeline").as_posix() for path in package.values()) == EXPECTED
    heavy = [
        name for name in modules if name.split(".")[0] in ("torch", "nvidia", "tritonclient", "google", "onnxruntime")
    ]
    assert heavy == []
