"""Size the server's memory pools from the repository it serves, not from Triton's defaults.

Two of Triton's defaults fail under load (ARCHITECTURE.md, "defaults that bite at scale"):

- the **CUDA memory pool** (64 MB per GPU) holds the GPU tensors that cross between models:
  with a GPU device the classifier keeps the preprocessing output on the GPU and hands it to
  the network, and one batch of 64 FP32 224x224 images is 38.5 MB;
- the Python backend's **shared memory** per stub carries every CPU tensor between the server
  and a stub: the request bytes into the classifier and, on the CPU device, the preprocessed
  batch into the network.

The budget: every instance of a model that produces or consumes the preprocessed batch may
hold one full batch at a time, twice over (an input and an output in flight), plus headroom.

The container's ``/dev/shm`` must then hold every Python-backend region at its largest:
:func:`dev_shm_bytes` (Docker's ``--shm-size``, the memory-backed ``emptyDir`` of
``deploy/k8s``). Too small, it fails requests under load ("Failed to increase the shared
memory pool size"), not at start.

Example::

    sizing = ServerSizing.from_repository(Path("build/model_repository"))
    print(sizing.describe())
    args = sizing.server_args()
    shm = dev_shm_bytes(spec.configs(), shm_default_byte_size=sizing.shm_default_bytes)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bls_pipeline.runtime.device import GPU, visible_gpu_count

MIB = 1024 * 1024
# Triton's own minimum worth keeping when a repository needs less (its default is 64 MB).
MIN_CUDA_POOL_BYTES = 256 * MIB
MIN_SHM_BYTES = 64 * MIB
BYTES_PER_ELEMENT = {"TYPE_FP32": 4, "TYPE_FP16": 2, "TYPE_UINT8": 1}


@dataclass(frozen=True)
class ServerSizing:
    """Memory sizes for one server; ``gpus`` lists the devices that get a CUDA pool."""

    cuda_pool_bytes: int
    shm_default_bytes: int
    shm_growth_bytes: int
    gpus: tuple[int, ...]
    batch_bytes: int

    @classmethod
    def defaults(cls) -> ServerSizing:
        """The sizes for a repository that is not this project's (no configs to read)."""
        return cls(
            cuda_pool_bytes=0, shm_default_bytes=MIN_SHM_BYTES, shm_growth_bytes=MIN_SHM_BYTES, gpus=(), batch_bytes=0
        )

    @classmethod
    def from_repository(cls, repository: Path, gpus: tuple[int, ...] | None = None) -> ServerSizing | None:
        """Size for the models of ``repository``: from its build spec (``bls_build.json``), or,
        in a repository adopted from the user's models (``build_repo.py --from-repository`` or
        ``--network``, which write no spec), from the configs its classifier is wired to.

        ``gpus``: the devices to give a pool; default the ones the spec names, else every
        visible GPU (an instance group without ``gpus`` places its instances on each).
        ``None`` when there is neither (a test's or a user's own models).
        """
        from bls_pipeline.builder import model_config as mc
        from bls_pipeline.builder.repository import read_build_spec

        spec = read_build_spec(repository)
        if spec is not None:
            configs = spec.configs()
            preprocessing, network = configs[mc.PREPROCESSING], configs[mc.NETWORK]
            max_batch, on_gpu, spec_gpus = None, None, spec.gpus
        else:
            wired = _wired_configs(repository)
            if wired is None:
                return None
            preprocessing, network, max_batch, on_gpu = wired
            spec_gpus = ()
        if gpus is None:
            gpus = spec_gpus or tuple(range(max(visible_gpu_count(), 1)))
        return cls.from_configs(preprocessing, network, gpus, max_batch=max_batch, on_gpu=on_gpu)

    @classmethod
    def from_configs(
        cls,
        preprocessing,
        network,
        gpus: tuple[int, ...] = (0,),
        *,
        max_batch: int | None = None,
        on_gpu: bool | None = None,
    ) -> ServerSizing:
        """Size for the ``preprocessing`` and network configs (``ModelConfig`` messages).

        ``max_batch``: the most images that cross between them at once (the classifier's
        chunk); default the larger of the two configs' max batch sizes. ``on_gpu``: whether
        the batch crosses in GPU memory; default whether either config has GPU instances.
        """
        from bls_pipeline.builder import model_config as mc

        # The network's input is the preprocessed image with concrete dims (the DALI model's
        # output may be declared [-1, -1, -1] when autoconfigured).
        image = network.input[0]
        per_image = BYTES_PER_ELEMENT.get(mc.model_config_pb2.DataType.Name(image.data_type), 4)
        for dim in image.dims:
            per_image *= max(int(dim), 1)
        max_batch = max_batch or max(preprocessing.max_batch_size, network.max_batch_size, 1)
        batch_bytes = per_image * max_batch
        # An instance group's count is per GPU: the pool of one GPU serves that many of each.
        instances = mc.instance_count(preprocessing) + mc.instance_count(network)
        if on_gpu is None:
            on_gpu = GPU in (mc.device_of(preprocessing), mc.device_of(network))
        in_flight = 2 * batch_bytes * instances
        return cls(
            cuda_pool_bytes=max(MIN_CUDA_POOL_BYTES, _round_up(in_flight)) if on_gpu else 0,
            shm_default_bytes=max(MIN_SHM_BYTES, _round_up(batch_bytes)),
            shm_growth_bytes=max(MIN_SHM_BYTES, _round_up(batch_bytes)),
            gpus=gpus if on_gpu else (),
            batch_bytes=batch_bytes,
        )

    def server_args(self) -> list[str]:
        """``tritonserver`` flags that apply these sizes."""
        args = [
            f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_growth_bytes}",
        ]
        if self.cuda_pool_bytes:
            args += [f"--cuda-memory-pool-byte-size={gpu}:{self.cuda_pool_bytes}" for gpu in self.gpus]
        return args

    def describe(self) -> str:
        """One line for the launcher's start-up output."""
        pool = (
            f"CUDA memory pool {self.cuda_pool_bytes // MIB} MiB on GPU {','.join(map(str, self.gpus))}"
            if self.gpus
            else "no CUDA memory pool (CPU repository)"
        )
        return (
            f"sized for a {self.batch_bytes / MIB:.1f} MiB preprocessed batch: {pool}; "
            f"Python-backend shared memory {self.shm_default_bytes // MIB} MiB (+{self.shm_growth_bytes // MIB} MiB steps)"
        )


def _wired_configs(repository: Path) -> tuple[object, object, int, bool] | None:
    """The preprocessing and network configs that ``repository``'s classifier calls (its
    wiring parameters name them), the images it sends them at once, and whether the batch
    crosses in GPU memory (a ``KIND_GPU`` classifier asks for it there: the user's configs
    may leave their instances to Triton). ``None`` without a classifier, without either
    config, with a config that does not parse, or where the network's input dims are not
    declared."""
    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.errors import ConfigError
    from bls_pipeline.layout import CONFIG_FILE
    from bls_pipeline.request.submodels import SubModels

    classifier_file = Path(repository) / mc.CLASSIFIER / CONFIG_FILE
    if not classifier_file.is_file():
        return None
    try:
        classifier = mc.read_config(classifier_file)
        wiring = SubModels.from_parameters(mc.parameters_of(classifier))
        files = [Path(repository) / name / CONFIG_FILE for name in (wiring.preprocessing_model, wiring.network_model)]
        if not all(file.is_file() for file in files):
            return None
        preprocessing, network = (mc.read_config(file) for file in files)
    except ConfigError:
        # A config that does not parse is the server's to report, naming the model (the
        # launcher shows its log); there is nothing to size from.
        return None
    if not network.input or not all(dim > 0 for dim in network.input[0].dims):
        return None
    return preprocessing, network, wiring.chunk_size(classifier.max_batch_size), mc.device_of(classifier) == GPU


def _round_up(size: int, unit: int = MIB) -> int:
    return -(-size // unit) * unit


# Rounded up to this, so that small config changes do not move the manifests.
DEV_SHM_UNIT = 64 * MIB


def dev_shm_bytes(configs: Mapping[str, object], *, shm_default_byte_size: int, unit: int = DEV_SHM_UNIT) -> int:
    """The ``/dev/shm`` bytes that the Python-backend models of ``configs`` need together.

    ``configs`` are the three models' ``ModelConfig`` by name. Each Python-backend instance
    has its region (``shm_default_byte_size``) plus what one ``execute`` of a full batch
    holds at once, an upper bound (with the GPU hand-off, ``dali`` stays in GPU memory):

    - ``classifier``: the request rows and the same rows sent to preprocessing (``2 * images``),
      the preprocessed batch received and sent to the network (``2 * dali``), the logits, the
      full probabilities and the top-k outputs at ``top_k`` = all classes (``6 * logits``);
    - ``preprocessing`` hosted in Python: ``images + dali``; the network in Python: ``dali + logits``;

    with ``images = max_batch_size * max_image_bytes``, ``dali`` the batch of preprocessed
    images and ``logits = max_batch_size * classes * 4``.
    """
    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.request.orchestration import ClassifierSettings

    classifier, network = configs[mc.CLASSIFIER], configs[mc.NETWORK]
    settings = ClassifierSettings.from_parameters(
        mc.parameters_of(classifier), max_batch_size=classifier.max_batch_size
    )
    batch = settings.max_batch_size
    images = batch * settings.max_image_bytes
    dali = ServerSizing.from_configs(configs[mc.PREPROCESSING], network).batch_bytes
    logits = batch * math.prod(network.output[0].dims) * BYTES_PER_ELEMENT["TYPE_FP32"]
    working_sets = {
        mc.CLASSIFIER: 2 * images + 2 * dali + 6 * logits,
        mc.PREPROCESSING: images + dali,
        mc.NETWORK: dali + logits,
    }
    total = sum(
        mc.instance_count(configs[name]) * (shm_default_byte_size + working_set)
        for name, working_set in working_sets.items()
        if configs[name].backend == "python"
    )
    return _round_up(total, unit)
