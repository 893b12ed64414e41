"""How much ``/dev/shm`` a repository's Python-backend models need (the container's size).

Every Python-backend model instance has one shared-memory region: it starts at the
backend's ``shm-default-byte-size`` and grows (by ``shm-growth-byte-size``) while one
``execute`` holds its tensors. An ``/dev/shm`` that is too small fails requests with
"Failed to increase the shared memory pool size" under load, not at start, so the size is
computed from the configs rather than found by trial: Docker's ``--shm-size`` and the
Kubernetes memory-backed ``emptyDir`` (``deploy/k8s/base/deployment.yaml``) use it.

What one ``execute`` of a full batch holds at once, per instance (an upper bound: with the
GPU hand-off of the preprocessed batch, ``dali`` stays in GPU memory):

- ``classifier``: the request rows and the same rows sent to ``preprocessing``
  (``2 * images``), the preprocessed batch received and sent to the network
  (``2 * dali``), the logits, the full probabilities and the top-k outputs at ``top_k`` =
  all classes (``6 * logits``);
- ``preprocessing`` hosted in Python (``--target local``): ``images + dali``;
- the network hosted in Python: ``dali + logits``.

with ``images = max_batch_size * max_image_bytes``, ``dali = max_batch_size * 3 * crop^2 *
4`` and ``logits = max_batch_size * classes * 4``.

Example::

    size = python_backend_shm_bytes(spec.configs(), shm_default_byte_size=64 << 20)
    print(f"sizeLimit: {size >> 20}Mi")
"""

from __future__ import annotations

import math
from typing import Mapping

from bls_pipeline.build import model_config as mc
from bls_pipeline.request.orchestration import ClassifierSettings

MIB = 1 << 20
# Sizes are rounded up to this, so that small config changes do not move the manifests.
ROUND_TO = 64 * MIB
FP32_BYTES = 4


def _instances(config: mc.ModelConfig) -> int:
    return sum(group.count or 1 for group in config.instance_group) or 1


def python_backend_shm_bytes(
    configs: Mapping[str, mc.ModelConfig], *, shm_default_byte_size: int, round_to: int = ROUND_TO
) -> int:
    """The ``/dev/shm`` bytes that the Python-backend models of ``configs`` need together.

    ``configs`` are the three models by name (:meth:`RepositorySpec.configs` or
    :func:`read_config` of a built repository); see the module docstring for the terms.
    """
    classifier, network = configs[mc.CLASSIFIER], configs[mc.NETWORK]
    settings = ClassifierSettings.from_parameters(mc.parameters_of(classifier), max_batch_size=classifier.max_batch_size)
    (network_input,) = [tensor for tensor in network.input if tensor.name == mc.NETWORK_INPUT]
    (network_output,) = [tensor for tensor in network.output if tensor.name == mc.NETWORK_OUTPUT]
    batch = settings.max_batch_size
    images = batch * settings.max_image_bytes
    dali = batch * math.prod(network_input.dims) * FP32_BYTES
    logits = batch * math.prod(network_output.dims) * FP32_BYTES
    working_sets = {
        mc.CLASSIFIER: 2 * images + 2 * dali + 6 * logits,
        mc.PREPROCESSING: images + dali,
        mc.NETWORK: dali + logits,
    }
    total = sum(
        _instances(configs[name]) * (shm_default_byte_size + working_set)
        for name, working_set in working_sets.items()
        if configs[name].backend == "python"
    )
    return math.ceil(total / round_to) * round_to
