"""The soak's memory watch without a server: the repository's DALI pipeline and network in one process.

When a served soak finds ``tritonserver``'s own memory growing, this tells DALI and the
network apart from the server around them: the same ``dali.py`` (or ``model.dali``) with its
served settings and the same network runtime as the Python-backend models run them, in this
process, on batches of every size up to the served max batch (as the classifier's merged and
split executions give them), from the soak's photographs, ``bad_fraction`` of them with one
PNG whose pixel data is corrupt among them (DALI fails the batch, and the pipeline is rebuilt,
as Triton's DALI backend rebuilds its own after every failed run); this process's resident memory less
its shared pages, and on a GPU its GPU memory, read every sample interval. The report is a
:class:`~bls_pipeline.devtools.soak.SoakReport` (each batch one "request"), so its growth
verdicts are the soak's.

Example::

    report = run_in_process_soak(Path("/tmp/repo"), photographs, InProcessSoakOptions(duration_s=300))
    print(format_report(report, max_growth=5))
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bls_pipeline.devtools.load import clock
from bls_pipeline.devtools.soak import MemorySnapshot, SoakReport, gpu_memory_by_pid, read_rss_kib
from bls_pipeline.devtools.stats import percentile

THIS_PROCESS = "this process"
CORRUPT_KIND = "a corrupt PNG in the batch"


@dataclass(frozen=True)
class InProcessSoakOptions:
    """``duration_s`` of batches, the "warm" reading after ``warmup_s``, memory every
    ``sample_interval_s``; batch sizes uniform in 1..``max_batch_size`` (None: the classifier's)."""

    duration_s: float
    warmup_s: float = 60.0
    sample_interval_s: float = 10.0
    max_batch_size: int | None = None
    seed: int = 0
    bad_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("the in-process soak needs a positive --duration longer than its warm-up")
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ValueError(f"bad fraction must be in 0..1, got {self.bad_fraction}")
        if self.sample_interval_s <= 0 or (self.max_batch_size is not None and self.max_batch_size < 1):
            raise ValueError("the sample interval must be positive and the max batch size at least 1")


def own_memory(gpu: bool) -> MemorySnapshot:
    """This process's private resident KiB and, with ``gpu``, its GPU MiB."""
    rss = read_rss_kib(os.getpid())
    used = gpu_memory_by_pid() if gpu else None
    gpu_mib = None if used is None else {THIS_PROCESS: used.get(os.getpid(), 0)}
    return MemorySnapshot(rss, 0, 1, {THIS_PROCESS: rss}, gpu_mib)


def repository_runners(repository: Path, max_batch_size: int) -> tuple[Callable[[list[np.ndarray]], object], bool]:
    """``(preprocess_and_classify, on_gpu)``: a function that runs one batch of encoded images
    through the repository's DALI pipeline and network the way its Python-backend models do."""
    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.builder.repository import read_build_spec
    from bls_pipeline.runtime.dali import DaliPreprocessor
    from bls_pipeline.runtime.device import GPU
    from bls_pipeline.runtime.network import load_network, network_options

    spec = read_build_spec(repository)
    if spec is None:
        raise ValueError(f"{repository} has no bls_build.json: build it with tools/build_repo.py")
    on_gpu = spec.device == GPU
    preprocessor = DaliPreprocessor.from_version_dir(
        repository / mc.PREPROCESSING / "1", on_device=on_gpu, max_batch_size=max_batch_size
    )
    config = mc.read_config(repository / mc.NETWORK / "config.pbtxt")
    network = load_network(
        repository / mc.NETWORK / "1",
        device=spec.device,
        max_batch_size=max_batch_size,
        **network_options(mc.parameters_of(config)),
    )

    def run(rows: list[np.ndarray]) -> object:
        return network(preprocessor.on_gpu(rows) if on_gpu else preprocessor(rows))

    return run, on_gpu


def run_in_process_soak(
    repository: Path,
    images: Sequence[bytes],
    options: InProcessSoakOptions,
    *,
    corrupt: bytes | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run batches of ``images`` through the repository in this process for ``options.duration_s``;
    ``options.bad_fraction`` of the batches carry ``corrupt`` (an image DALI fails to decode)
    too, and must fail."""
    if options.bad_fraction and corrupt is None:
        raise ValueError("a bad fraction needs the corrupt image to send")
    from bls_pipeline.devtools.bench.run import served_max_batch_size

    max_batch = options.max_batch_size or served_max_batch_size(repository)
    run, on_gpu = repository_runners(repository, max_batch)
    rows = [np.frombuffer(image, np.uint8) for image in images]
    rng = random.Random(options.seed)
    # The largest batch first, as the served DALI model's warm-up does.
    run([rows[i % len(rows)] for i in range(max_batch)])
    memory = {"start": own_memory(on_gpu)}
    trace: list[tuple[float, int, MemorySnapshot]] = []
    latencies: list[float] = []
    state = {"batches": 0, "images": 0, "failed": 0, "unexpected": 0}
    finished = threading.Event()
    started = clock()
    warm_at: list[float] = []

    def sampler() -> None:
        while not finished.wait(options.sample_interval_s):
            elapsed, snapshot = clock() - started, own_memory(on_gpu)
            trace.append((elapsed, state["batches"], snapshot))
            if "warm" not in memory and elapsed >= options.warmup_s:
                memory["warm"] = snapshot
                warm_at.append(elapsed)
            if progress is not None:
                progress(
                    f"{elapsed:.0f}/{options.duration_s:.0f} s, {state['batches']} batches, "
                    f"RSS {snapshot.rss_kib / 1024:.0f} MiB"
                )

    watcher = threading.Thread(target=sampler, name="soak-in-process-memory", daemon=True)
    watcher.start()
    try:
        while clock() - started < options.duration_s:
            size = rng.randint(1, max_batch)
            batch = [rows[rng.randrange(len(rows))] for _ in range(size)]
            bad = corrupt is not None and rng.random() < options.bad_fraction
            if bad:
                batch[rng.randrange(size)] = np.frombuffer(corrupt, np.uint8)
            begin = clock()
            try:
                run(batch)
                state["unexpected"] += bad  # DALI decoded the corrupt image
                state["images"] += size
            except RuntimeError:
                state["failed" if bad else "unexpected"] += 1
            latencies.append(clock() - begin)
            state["batches"] += 1
    finally:
        duration = clock() - started
        finished.set()
        watcher.join()
    memory.setdefault("warm", trace[0][2] if trace else memory["start"])
    memory["end"] = own_memory(on_gpu)
    batches = state["batches"]
    return SoakReport(
        requests=batches,
        concurrency=1,
        ok=batches - state["failed"] - state["unexpected"],
        expected_errors={CORRUPT_KIND: state["failed"]} if state["failed"] else {},
        unexpected=state["unexpected"],
        unexpected_by_kind={"batches": state["unexpected"]} if state["unexpected"] else {},
        unexpected_examples=[],
        duration_s=duration,
        throughput_rps=batches / duration if duration > 0 else 0.0,
        latency_p50_ms=percentile(latencies, 50) * 1e3 if latencies else 0.0,
        latency_p99_ms=percentile(latencies, 99) * 1e3 if latencies else 0.0,
        memory=memory,
        memory_trace=trace,
        images_per_s=state["images"] / duration if duration > 0 else 0.0,
        warm_at_s=warm_at[0] if warm_at else None,
        expected_as="failed in DALI",
    )
