"""Run the DALI preprocessing pipeline in this process.

Used by the ``preprocessing`` model of a ``--target local`` repository (a Python-backend model
hosting the same ``dali.py`` or ``model.dali`` that the DALI backend serves in the NVIDIA Triton container), by
the in-process reference of the tests and by the benchmark.

The decoder runs where ``preprocessing.json`` says (``decoder_device``: ``cpu`` or ``mixed``,
written from the repository's one device setting); nothing here picks a device on its own.

Example::

    runner = DaliPreprocessor.from_file(repo / "preprocessing" / "1" / "dali.py", max_batch_size=64)
    images = runner([np.frombuffer(jpeg_bytes, np.uint8)])   # float32 [1, 3, 224, 224], host memory
    on_gpu = runner.on_gpu(rows)                             # torch CUDA tensor (mixed decoder only)
    served = DaliPreprocessor.from_version_dir(repo / "preprocessing" / "1", on_device=False, max_batch_size=64)
    for images in served.prefetched(batches):                # DALI prepares the next batches meanwhile
        network(images)
"""

from __future__ import annotations

import ctypes
import importlib.util
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from bls_pipeline.contract import DALI_INPUT
from bls_pipeline.layout import DALI_FILE, SERIALIZED_FILE
from bls_pipeline.model_sources import model_source

if TYPE_CHECKING:
    import torch

LOGGER = logging.getLogger(__name__)

# The pipeline of the source repository, which build_repo copies into every repository.
PACKAGED_PIPELINE = model_source("preprocessing", DALI_FILE)
# Runs between two returns of free heap memory to the OS (see release_free_memory).
TRIM_EVERY_RUNS = 64

_libc: ctypes.CDLL | None | bool = None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    DALI's worker threads allocate in many malloc arenas, and glibc keeps what they free: a
    soak of batches of changing sizes, and every pipeline rebuilt after a decoder failure,
    raised the preprocessing process's RSS by about 3 MiB per 1000 requests without this.
    A trim costs under a millisecond.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def load_pipeline_module(path: str | os.PathLike[str] = PACKAGED_PIPELINE) -> ModuleType:
    """Import a ``dali.py`` file as a module (it reads ``preprocessing.json`` beside itself)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"dali_pipeline_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the DALI pipeline file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipeline_from_settings(
    module: ModuleType,
    settings: dict,
    *,
    max_batch_size: int,
    num_threads: int,
    device_id: int | None,
    prefetch_queue_depth: int = 1,
) -> Any:
    """The (unbuilt) pipeline of a ``dali.py`` module with every setting of its
    ``preprocessing.json`` passed explicitly.

    By default one batch per run (``prefetch_queue_depth=1``): the pipeline must not wait for
    a second fed batch, and it is how Triton's DALI backend runs a pipeline too. A deeper
    queue (the benchmark's pipelined in-process limit) needs that many batches fed ahead.
    """
    optional = {key: settings[key] for key in ("hw_decoder_load",) if key in settings}
    return module.preprocessing(
        batch_size=max_batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch_queue_depth,
        resize_shorter=settings["resize_shorter"],
        crop=settings["crop"],
        interpolation=settings["interpolation"],
        mean=settings["mean"],
        std=settings["std"],
        decoder_device=settings["decoder_device"],
        **optional,
    )


def prefetched_outputs(
    pipe: Any,
    input_name: str,
    batches: Sequence[Sequence[np.ndarray]],
    depth: int,
    *,
    first: Sequence[np.ndarray] | None = None,
) -> Iterator[Any]:
    """DALI's output of each ``run()`` of ``pipe`` (built with ``prefetch_queue_depth=depth``)
    on ``batches`` over and over, ``first`` before them when given, with ``depth + 1`` batches
    always fed ahead so that its worker threads prepare the next ones meanwhile.

    Each output is DALI's own buffer, valid until the next ``next()``. ``first`` is the batch
    the pipeline runs first: a mixed decoder sizes its hardware share from it.
    """
    queue = itertools.chain([first] if first is not None else [], itertools.cycle(batches))
    ahead = 0
    while True:
        while ahead <= depth:
            pipe.feed_input(input_name, list(next(queue)))
            ahead += 1
        (output,) = pipe.run()
        ahead -= 1
        yield output


class DaliPreprocessor:
    """A built DALI pipeline that turns encoded images into a float32 ``[N, 3, H, W]`` batch.

    ``make_pipeline(prefetch_queue_depth)`` returns a new pipeline each time it is called
    (after a decoder failure the pipeline is rebuilt; :meth:`prefetched` builds a deeper
    one); ``on_device`` says whether its output is in GPU memory (a
    ``mixed`` decoder). Batches larger than ``max_batch_size`` run in chunks. A decoding
    error raises ``RuntimeError`` (DALI's) after the pipeline has been rebuilt for the next call.
    """

    def __init__(
        self,
        make_pipeline: Callable[[int], Any],
        *,
        input_name: str,
        max_batch_size: int,
        on_device: bool,
        description: str = "",
    ) -> None:
        self.max_batch_size = max_batch_size
        self.on_device = on_device
        self.input_name = input_name
        self._make_pipeline = make_pipeline
        self._pipe = self._build()
        self._runs = 0
        LOGGER.info("DALI preprocessing built: max batch %d, %s", max_batch_size, description)

    @property
    def decoder_device(self) -> str:
        """DALI's decoder placement: ``mixed`` (GPU) or ``cpu``."""
        return "mixed" if self.on_device else "cpu"

    def _build(self, prefetch_queue_depth: int = 1):
        pipe = self._make_pipeline(prefetch_queue_depth)
        pipe.build()
        return pipe

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str] = PACKAGED_PIPELINE,
        *,
        max_batch_size: int,
        num_threads: int | None = None,
        gpu_id: int = 0,
    ) -> DaliPreprocessor:
        """Build from a ``dali.py`` file, with the settings of its ``preprocessing.json``.

        The decoder device is the settings' ``decoder_device``; ``gpu_id`` only says which GPU
        a ``mixed`` decoder uses.
        """
        module = load_pipeline_module(path)
        settings = module.load_settings(Path(path).resolve().parent)
        decoder_device = settings["decoder_device"]
        on_device = decoder_device != "cpu"
        make_pipeline = lambda prefetch_queue_depth: pipeline_from_settings(  # noqa: E731
            module,
            settings,
            max_batch_size=max_batch_size,
            num_threads=num_threads or settings["num_threads"],
            device_id=gpu_id if on_device else None,
            prefetch_queue_depth=prefetch_queue_depth,
        )
        return cls(
            make_pipeline,
            input_name=module.INPUT_NAME,
            max_batch_size=max_batch_size,
            on_device=on_device,
            description=f"{decoder_device} decoder, settings {settings}",
        )

    @classmethod
    def from_serialized(
        cls,
        path: str | os.PathLike[str],
        *,
        max_batch_size: int,
        on_device: bool,
        num_threads: int | None = None,
        gpu_id: int = 0,
        input_name: str = DALI_INPUT,
    ) -> DaliPreprocessor:
        """Build from a serialized pipeline (``model.dali``) whose input is ``input_name``.

        Its decoder device is part of the graph, written from the repository's device setting;
        ``on_device`` is that setting (the model's instance kind): a ``mixed`` decoder needs it.
        """
        from nvidia.dali.pipeline import Pipeline

        serialized = Path(path).read_bytes()
        overrides = {"num_threads": num_threads} if num_threads else {}
        # Deserializing takes no executor from the file: a deeper queue asks for the
        # asynchronous, pipelined one that dali.py's pipelines have by default.
        make_pipeline = lambda prefetch_queue_depth: Pipeline.deserialize(  # noqa: E731
            serialized,
            batch_size=max_batch_size,
            device_id=gpu_id if on_device else None,
            prefetch_queue_depth=prefetch_queue_depth,
            **({"exec_async": True, "exec_pipelined": True} if prefetch_queue_depth > 1 else {}),
            **overrides,
        )
        return cls(
            make_pipeline,
            input_name=input_name,
            max_batch_size=max_batch_size,
            on_device=on_device,
            description=f"serialized pipeline {path}",
        )

    @classmethod
    def from_version_dir(
        cls, directory: str | os.PathLike[str], *, on_device: bool, input_name: str = DALI_INPUT, **options: Any
    ) -> DaliPreprocessor:
        """The pipeline of a ``preprocessing/1`` folder: ``model.dali`` if there is one, else ``dali.py``.

        ``on_device`` (the model's instance kind) and ``input_name`` (an adopted pipeline's
        own) matter for ``model.dali`` only: ``dali.py`` takes its decoder device from
        ``preprocessing.json``, and names its input itself.
        """
        serialized = Path(directory) / SERIALIZED_FILE
        if serialized.is_file():
            return cls.from_serialized(serialized, on_device=on_device, input_name=input_name, **options)
        return cls.from_file(Path(directory) / DALI_FILE, **options)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocess 1-D uint8 arrays of encoded bytes; returns float32 ``[N, 3, crop, crop]`` on the host."""
        chunks = self._chunks(images)
        if len(chunks) == 1:
            return self._host(self._run(images), copy=False)
        # DALI reuses its output buffers on the next run: copy each chunk before running the next.
        return np.concatenate([self._host(self._run(chunk), copy=True) for chunk in chunks])

    def prefetched(self, batches: Sequence[Sequence[np.ndarray]], depth: int = 2) -> Iterator[np.ndarray]:
        """Preprocess ``batches`` over and over (endlessly) the way one process runs DALI
        well: a separate pipeline of the same settings that prefetches ``depth`` batches
        (asynchronous, pipelined execution), fed ``depth + 1`` batches ahead of each ``run()``,
        so DALI's worker threads prepare the next batches while the caller uses this one.

        Each yielded array is DALI's host buffer (no copy), valid until the next ``next()``.
        Batches must hold at most ``max_batch_size`` images. Closing the generator (or
        dropping it) frees its pipeline; this runner's own pipeline is not touched.
        """
        if any(len(batch) > self.max_batch_size for batch in batches) or not batches:
            raise ValueError(f"prefetched() takes one or more batches of at most {self.max_batch_size} images")
        return self._prefetched_runs(batches, depth)

    def _prefetched_runs(self, batches: Sequence[Sequence[np.ndarray]], depth: int) -> Iterator[np.ndarray]:
        pipe = self._build(prefetch_queue_depth=depth)
        runs = prefetched_outputs(pipe, self.input_name, batches, depth)
        try:
            for output in runs:
                yield self._host(output, copy=False)
        finally:
            runs.close()
            del runs, pipe
            release_free_memory()

    def on_gpu(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Like calling the runner, but the batch stays on the GPU: a torch CUDA tensor.

        Only for a ``mixed`` decoder. The tensor owns its memory: DALI reuses its output
        buffers on the next run, while Triton may still be reading the last response.
        """
        import torch

        if not self.on_device:
            raise RuntimeError("on_gpu() needs a mixed (GPU) decoder; this pipeline decodes on the CPU")
        chunks = [torch.from_dlpack(self._run(chunk).as_tensor()).clone() for chunk in self._chunks(images)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _chunks(self, images: Sequence[np.ndarray]) -> list[Sequence[np.ndarray]]:
        return [images[start : start + self.max_batch_size] for start in range(0, len(images), self.max_batch_size)]

    def _host(self, output: Any, *, copy: bool) -> np.ndarray:
        if self.on_device:
            output, copy = output.as_cpu(), False  # as_cpu() is the copy
        return np.array(output.as_tensor(), copy=copy)

    def _run(self, images: Sequence[np.ndarray]) -> Any:
        if self._pipe is None:  # a rebuild failed last time
            self._pipe = self._build()
        try:
            self._pipe.feed_input(self.input_name, list(images))
            (output,) = self._pipe.run()
        except RuntimeError:
            # A decoder failure leaves the pipeline unusable ("Current pipeline object is no
            # longer valid"): replace it, freeing the old one first.
            self._pipe = None
            self._pipe = self._build()
            release_free_memory()
            raise
        self._runs += 1
        if self._runs % TRIM_EVERY_RUNS == 0:
            release_free_memory()
        return output
