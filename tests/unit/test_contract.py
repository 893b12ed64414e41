"""Specification of ``bls_pipeline.contract``: one home for model names, tensor names, dtypes and dims."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bls_pipeline import contract, layout
from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import RepositorySpec


def test_the_contract_imports_nothing_outside_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import bls_pipeline.contract; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()

    assert "bls_pipeline" in loaded
    assert set(loaded) - {"bls_pipeline"} <= sys.stdlib_module_names


@pytest.mark.parametrize(
    ("spec", "datatype"),
    [
        (contract.IMAGE, "UINT8"),
        (contract.IMAGE_BYTES, "BYTES"),
        (contract.SCORES, "FP32"),
        (contract.CLASS_IDS, "INT64"),
        (contract.LABELS, "BYTES"),
    ],
)
def test_a_tensor_spec_names_its_protocol_datatype(spec, datatype):
    assert spec.datatype == datatype


@pytest.mark.parametrize("target", mc.TARGETS)
def test_every_config_declares_the_contract_tensors(target):
    configs = RepositorySpec(target=target, max_batch_size=4, num_classes=7).configs()

    def declared(tensors):
        return [(t.name, mc.model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in tensors]

    def expected(*specs):
        return [(s.name, s.data_type, s.dims) for s in specs]

    assert declared(configs[contract.CLASSIFIER].input) == expected(*contract.CLASSIFIER_INPUTS)
    assert declared(configs[contract.CLASSIFIER].output) == expected(
        *contract.CLASSIFIER_OUTPUTS, contract.probabilities(7)
    )
    # Triton's DALI backend serves it unbatched: the first dimension of its tensors counts the images.
    images = (-1,) if target == "triton" else ()
    assert declared(configs[contract.PREPROCESSING].input) == [("DALI_INPUT", "TYPE_UINT8", (*images, -1))]
    (output,) = expected(contract.preprocessed(contract.DALI_OUTPUT, 224))
    assert declared(configs[contract.PREPROCESSING].output) == [(*output[:2], (*images, *output[2]))]
    assert declared(configs[contract.NETWORK].input) == expected(contract.preprocessed(contract.NETWORK_INPUT, 224))
    assert declared(configs[contract.NETWORK].output) == expected(contract.logits(7))


def test_dali_py_keeps_a_copy_of_the_contract_and_layout_that_equals_them():
    pytest.importorskip("nvidia.dali")
    from bls_pipeline.runtime.dali import load_pipeline_module

    module = load_pipeline_module()

    assert (module.INPUT_NAME, module.OUTPUT_NAME) == (contract.DALI_INPUT, contract.DALI_OUTPUT)
    assert module.SETTINGS_FILE == layout.SETTINGS_FILE


def test_the_export_client_and_benchmark_use_the_contract_names():
    from bls_pipeline import client
    from bls_pipeline.builder import export
    from bls_pipeline.devtools.bench.images import BenchImage
    from bls_pipeline.devtools.bench.report import perf_analyzer_data

    assert (export.INPUT_NAME, export.OUTPUT_NAME) == (contract.NETWORK_INPUT, contract.NETWORK_OUTPUT)
    assert client.MODEL_NAME == contract.CLASSIFIER
    assert client.OUTPUT_NAMES == (contract.SCORES_OUTPUT, contract.CLASS_IDS_OUTPUT, contract.LABELS_OUTPUT)
    assert list(perf_analyzer_data([BenchImage("x", b"ab", 1, 1)])["data"][0]) == [contract.IMAGE_INPUT]
