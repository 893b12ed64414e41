"""The benchmark's repository: a built repository plus the two designs it is compared with.

:func:`write_bench_repository` copies a repository that ``tools/build_repo.py`` wrote
(``--target local``) and adds, next to ``classifier``, ``preprocessing`` and the network:

- ``classifier_ensemble``: a Triton ensemble of the same ``preprocessing`` and network
  models, ending in ``classifier_postprocess`` (a Python model doing the classifier's
  softmax/top-k/labels), so that it answers exactly like ``classifier``;
- ``classifier_naive``: one Python model that decodes with PIL and transforms with numpy
  (:mod:`bls_pipeline.devtools.bench.naive`), then runs the same network file with the same thread
  settings and batching as the built repository.

Example::

    names = write_bench_repository(Path("build/model_repository"), Path("/tmp/bench_repo"))
    # {"bls": "classifier", "ensemble": "classifier_ensemble", "naive": "classifier_naive"}
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from bls_pipeline import contract
from bls_pipeline.build import model_config as mc
from bls_pipeline.errors import ConfigError
from bls_pipeline.build.repository import LABELS_FILE, MODEL_FILE, SETTINGS_FILE

LOGGER = logging.getLogger(__name__)

ENSEMBLE = "classifier_ensemble"
POSTPROCESS = "classifier_postprocess"
NAIVE = "classifier_naive"
LOGITS_INPUT = "LOGITS"
# The endpoints the benchmark loads, by the name it reports them under.
ENDPOINTS = {"bls": mc.CLASSIFIER, "ensemble": ENSEMBLE, "naive": NAIVE}

_MODEL_PY = '''"""Python-backend entry point of the benchmark's ``{name}`` model; the logic lives in ``bls_pipeline``."""

from bls_pipeline.devtools.bench.models import {cls} as TritonPythonModel  # noqa: F401
'''


def _write_model_py(version_dir: Path, name: str, cls: str) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / MODEL_FILE).write_text(_MODEL_PY.format(name=name, cls=cls))


def postprocess_config(*, max_batch_size: int, num_classes: int, max_queue_delay_us: int) -> mc.ModelConfig:
    """``classifier_postprocess``: logits ``[C]`` in, the classifier's three outputs out."""
    config = mc.ModelConfig()
    config.CopyFrom(
        mc.classifier_config(
            max_batch_size=max_batch_size,
            parameters={"labels_file": LABELS_FILE},
            max_queue_delay_us=max_queue_delay_us,
        )
    )
    config.name = POSTPROCESS
    del config.input[:]
    config.input.add(name=LOGITS_INPUT, data_type=mc.model_config_pb2.TYPE_FP32, dims=[num_classes])
    return config


def classifier_ensemble_config(*, max_batch_size: int) -> mc.ModelConfig:
    """``classifier_ensemble``: IMAGE -> preprocessing -> network -> postprocess, as protobuf."""
    return mc.ensemble_config(
        name=ENSEMBLE,
        max_batch_size=max_batch_size,
        inputs=[contract.IMAGE.config()],
        outputs=[spec.config() for spec in contract.CLASSIFIER_OUTPUTS],
        steps=[
            mc.EnsembleStep(mc.PREPROCESSING, {mc.DALI_INPUT: mc.IMAGE_INPUT}, {mc.DALI_OUTPUT: "preprocessed"}),
            mc.EnsembleStep(mc.NETWORK, {mc.NETWORK_INPUT: "preprocessed"}, {mc.NETWORK_OUTPUT: "logits"}),
            mc.EnsembleStep(
                POSTPROCESS,
                {LOGITS_INPUT: "logits"},
                {mc.SCORES_OUTPUT: mc.SCORES_OUTPUT, mc.CLASS_IDS_OUTPUT: mc.CLASS_IDS_OUTPUT, mc.LABELS_OUTPUT: mc.LABELS_OUTPUT},
            ),
        ],
    )


def naive_config(classifier: mc.ModelConfig, network: mc.ModelConfig) -> mc.ModelConfig:
    """``classifier_naive``: the classifier's contract and batching, the network's threads."""
    config = mc.ModelConfig()
    config.CopyFrom(classifier)
    config.name = NAIVE
    # The top-k outputs only: the naive model does not offer Triton's classification extension.
    top_k = [output for output in config.output if output.name != contract.PROBABILITIES_OUTPUT]
    del config.output[:]
    config.output.extend(top_k)
    config.parameters.clear()
    config.parameters["labels_file"].string_value = LABELS_FILE
    for key, value in mc.parameters_of(network).items():
        if key in ("intra_op_threads", "allow_spinning"):
            config.parameters[key].string_value = value
    return config


def write_bench_repository(built: Path, output: Path) -> dict[str, str]:
    """Copy ``built`` to ``output`` (which must not exist) and add the comparison models.

    Returns the model name of each endpoint (:data:`ENDPOINTS`). A repository for the
    NVIDIA Triton container (``--target triton``) is refused: the naive model needs the
    ONNX file in a Python-backend model, which only a ``--target local`` build has.
    """
    built, output = Path(built), Path(output)
    configs = {name: mc.read_config(built / name / "config.pbtxt") for name in (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK)}
    if configs[mc.NETWORK].backend != "python":
        raise ConfigError(f"{built} is not a --target local repository: the benchmark runs the pip-installed server")
    onnx = built / mc.NETWORK / "1" / "model.onnx"
    if not onnx.is_file():
        raise ConfigError(f"{onnx} is missing: the naive baseline runs the ONNX model")
    shutil.copytree(built, output)
    classifier = configs[mc.CLASSIFIER]
    max_batch_size = classifier.max_batch_size
    delay = classifier.dynamic_batching.max_queue_delay_microseconds
    num_classes = configs[mc.NETWORK].output[0].dims[0]
    labels = output / mc.CLASSIFIER / "1" / LABELS_FILE

    post_dir = output / POSTPROCESS / "1"
    _write_model_py(post_dir, POSTPROCESS, "PostprocessModel")
    shutil.copyfile(labels, post_dir / LABELS_FILE)
    mc.write_config(
        output / POSTPROCESS / "config.pbtxt",
        postprocess_config(max_batch_size=max_batch_size, num_classes=num_classes, max_queue_delay_us=delay),
    )

    (output / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    mc.write_config(output / ENSEMBLE / "config.pbtxt", classifier_ensemble_config(max_batch_size=max_batch_size))

    naive_dir = output / NAIVE / "1"
    _write_model_py(naive_dir, NAIVE, "NaiveClassifierModel")
    shutil.copyfile(labels, naive_dir / LABELS_FILE)
    shutil.copyfile(output / mc.PREPROCESSING / "1" / SETTINGS_FILE, naive_dir / SETTINGS_FILE)
    os.link(output / mc.NETWORK / "1" / "model.onnx", naive_dir / "model.onnx")
    mc.write_config(output / NAIVE / "config.pbtxt", naive_config(classifier, configs[mc.NETWORK]))
    LOGGER.info("benchmark repository written to %s", output)
    return dict(ENDPOINTS)
