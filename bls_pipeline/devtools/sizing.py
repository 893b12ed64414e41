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

Example::

    sizing = ServerSizing.from_repository(Path("build/model_repository"))
    print(sizing.describe())
    args = sizing.server_args()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    def defaults(cls) -> "ServerSizing":
        """The sizes for a repository that is not this project's (no configs to read)."""
        return cls(cuda_pool_bytes=0, shm_default_bytes=MIN_SHM_BYTES, shm_growth_bytes=MIN_SHM_BYTES, gpus=(), batch_bytes=0)

    @classmethod
    def from_repository(cls, repository: Path, gpus: tuple[int, ...] = (0,)) -> "ServerSizing | None":
        """Read the preprocessing and network configs of ``repository`` and size for them.

        ``None`` when the repository has no such models (a test's or a user's own models).
        """
        from bls_pipeline.build import model_config as mc

        paths = [Path(repository) / name / "config.pbtxt" for name in (mc.PREPROCESSING, mc.NETWORK)]
        if not all(path.is_file() for path in paths):
            return None
        preprocessing, network = (mc.read_config(path) for path in paths)
        # The network's input is the preprocessed image with concrete dims (the DALI model's
        # output may be declared [-1, -1, -1] when autoconfigured).
        image = network.input[0]
        per_image = BYTES_PER_ELEMENT.get(_type_name(image.data_type), 4)
        for dim in image.dims:
            per_image *= max(int(dim), 1)
        max_batch = max(preprocessing.max_batch_size, network.max_batch_size, 1)
        batch_bytes = per_image * max_batch
        instances = _instances(preprocessing) + _instances(network)
        on_gpu = any(_on_gpu(config) for config in (preprocessing, network))
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


def _type_name(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


def _instances(config) -> int:
    return sum(max(group.count, 1) for group in config.instance_group) or 1


def _on_gpu(config) -> bool:
    from tritonclient.grpc import model_config_pb2

    return any(group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for group in config.instance_group)


def _round_up(size: int, unit: int = MIB) -> int:
    return -(-size // unit) * unit
