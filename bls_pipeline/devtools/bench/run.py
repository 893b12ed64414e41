"""Benchmark: what does the BLS orchestration cost next to the work it orchestrates?

One run measures, on one fixed set of photographs:

1. DALI preprocessing alone, in process (:class:`bls_pipeline.runtime.dali.DaliPreprocessor`);
2. the network alone, in process, on the runtime the server uses (:func:`load_network`);
3. both in process, no server, two ways: serial (``inprocess``: DALI, then the network, one
   batch after the other, as Triton's DALI backend runs its pipeline) and pipelined
   (``pipelined``: the same DALI pipeline prefetching two batches, fed ahead, its worker
   threads preparing batch k+1 while the network runs batch k). The pipelined figure is the
   in-process limit: the ratios ``*_vs_inprocess`` and their targets divide by it (by the
   serial one only where the pipeline cannot prefetch, as ``in_process_limit`` then says);
   ``bls_vs_inprocess_serial`` keeps the serial comparison of older results;
4. the ``classifier`` BLS endpoint over HTTP at several concurrencies;
5. the same sub-models as a Triton ensemble (+ the same postprocessing in a Python model);
6. a naive one-model baseline (PIL + numpy + the same network);
7. where Triton's own DALI and ONNX Runtime backends are built, 4 and 5 again with the two
   sub-models on them (``bls_native``, ``ensemble_native``) in the same server.

For every endpoint window the server's CPU time (tritonserver and every stub, from
``/proc``) per image is recorded, and for the in-process runs (serial and pipelined) the
process CPU time per image. The CPU ratios (``*_cpu_vs_inprocess``) compare the server's CPU
per image at concurrency 1 with the serial in-process CPU per image at batch 1: one image
at a time is the work either does there.

Each number is the median of ``repeats`` measurements, with min and max; the endpoints and
concurrencies are interleaved within each repeat so that a slow spell of a shared machine
hits them all alike. ``tools/bench.py`` is the command line.

Example::

    images = benchmark_images()
    result = run_benchmark(BenchOptions(repository=Path("build/model_repository")), images)
    print(format_table(result))
    check_result_schema(result)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bls_pipeline import contract
from bls_pipeline.client import host_port
from bls_pipeline.devtools.bench.forms import check_request_form
from bls_pipeline.devtools.bench.images import BenchImage
from bls_pipeline.devtools.load import NO_RETRY, LoadSample, Target, cyclic_groups, measure_window, warm_up
from bls_pipeline.devtools.stats import Spread, latency_percentiles, percentile
from bls_pipeline.errors import BenchError

if TYPE_CHECKING:
    from bls_pipeline.runtime.dali import DaliPreprocessor

LOGGER = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ENDPOINT_KEYS = ("bls", "ensemble", "naive", "bls_native", "ensemble_native")
# The endpoints every complete result has; the native ones only where the backends are built.
REQUIRED_ENDPOINTS = ("bls", "ensemble", "naive")
DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16)
QUICK_CONCURRENCIES = (1, 4)
# The in-process stages: DALI alone, the network alone, both one batch after the other
# (serial, how Triton's DALI backend runs its pipeline) and both overlapped (the pipelined
# in-process limit that the served endpoints are compared with).
IN_PROCESS_STAGES = ("preprocessing", "network", "inprocess", "pipelined")
STAGE_LABELS = {"inprocess": "serial: DALI, then network", "pipelined": "pipelined (the limit)"}
# Batches DALI prepares ahead of the one in use in the pipelined stage (prefetch_queue_depth).
PREFETCH_DEPTH = 2
# The targets, checked in every result.
TARGETS = {
    "bls_vs_inprocess": 0.85,
    "bls_vs_ensemble": 1.0,
    "bls_vs_naive": 1.1,
}
LATENCY_TARGET_MS = 3.0  # BLS p50 at concurrency 1 <= in-process single image + this
# The native hosting's targets (issue 9), as ratios from one run.
NATIVE_TARGETS = {"bls_native_vs_ensemble_native": 1.0, "bls_native_vs_naive": 1.1}
NATIVE_CPU_TARGET = 1.10  # server CPU per image <= this x the in-process CPU per image (c=1, batch 1)
NATIVE_LATENCY_TARGET = 1.25  # bls_native p50 at c=1 <= this x the in-process single-image latency


def limit_stage(images_per_s: Mapping[str, float]) -> str:
    """The in-process stage that is the limit: ``pipelined`` where it was measured, else
    the serial ``inprocess`` (a pipeline that cannot prefetch)."""
    return "pipelined" if images_per_s.get("pipelined", 0) > 0 else "inprocess"


def compute_ratios(images_per_s: Mapping[str, float]) -> dict[str, float]:
    """The issue's ratios from best throughputs: BLS over the in-process limit (the
    pipelined figure, see :func:`limit_stage`), the ensemble and the naive baseline; and
    over the serial in-process figure (``*_vs_inprocess_serial``). Keys ``bls``,
    ``inprocess``, ``ensemble``, ``naive``, and ``pipelined`` where measured."""
    for key in ("bls", "inprocess", "ensemble", "naive"):
        if images_per_s.get(key, 0) <= 0:
            raise ValueError(f"no positive throughput for {key!r}")
    bls, limit = images_per_s["bls"], images_per_s[limit_stage(images_per_s)]
    ratios = {
        "bls_vs_inprocess": bls / limit,
        "bls_vs_inprocess_serial": bls / images_per_s["inprocess"],
        "bls_vs_ensemble": bls / images_per_s["ensemble"],
        "bls_vs_naive": bls / images_per_s["naive"],
    }
    if images_per_s.get("bls_native", 0) > 0 and images_per_s.get("ensemble_native", 0) > 0:
        native = images_per_s["bls_native"]
        ratios["bls_native_vs_inprocess"] = native / limit
        ratios["bls_native_vs_inprocess_serial"] = native / images_per_s["inprocess"]
        ratios["bls_native_vs_ensemble_native"] = native / images_per_s["ensemble_native"]
        ratios["bls_native_vs_naive"] = native / images_per_s["naive"]
        ratios["bls_native_vs_bls"] = native / bls
    return ratios


def cpu_ratios(cpu_ms_per_image: Mapping[str, float]) -> dict[str, float]:
    """Server CPU per image at concurrency 1 over the serial in-process CPU per image at
    batch 1 (one image at a time either way), for each hosting of the classifier measured
    (``bls``, ``bls_native``)."""
    reference = cpu_ms_per_image.get("inprocess_batch_1")
    if not reference:
        return {}
    return {
        f"{key}_cpu_vs_inprocess": cpu_ms_per_image[f"{key}_c1"] / reference
        for key in ("bls", "bls_native")
        if cpu_ms_per_image.get(f"{key}_c1")
    }


def check_targets(
    ratios: Mapping[str, float], latency_ms: Mapping[str, float], *, limit: str = "pipelined"
) -> dict[str, dict[str, Any]]:
    """Each target of the issue with its measured value and whether it is met; ``limit`` is
    the in-process stage the ``*_vs_inprocess`` ratios divide by (:func:`limit_stage`)."""

    reference = "serial" if limit == "inprocess" else limit

    def goal_text(name: str, goal: float) -> str:
        return f">= {goal} (of the {reference} in-process figure)" if name.endswith("_vs_inprocess") else f">= {goal}"

    checks: dict[str, dict[str, Any]] = {
        name: {"target": goal_text(name, goal), "value": ratios[name], "met": ratios[name] >= goal}
        for name, goal in TARGETS.items()
    }
    allowed = latency_ms["inprocess_single"] + LATENCY_TARGET_MS
    checks["bls_p50_c1"] = {
        "target": f"<= {allowed:.2f} ms (in-process single + {LATENCY_TARGET_MS} ms)",
        "value": latency_ms["bls_p50_c1"],
        "met": latency_ms["bls_p50_c1"] <= allowed,
    }
    for name, goal in NATIVE_TARGETS.items():
        if name in ratios:
            checks[name] = {"target": f">= {goal}", "value": ratios[name], "met": ratios[name] >= goal}
    if "bls_native_p50_c1" in latency_ms:
        ratio = latency_ms["bls_native_p50_c1"] / latency_ms["inprocess_single"]
        checks["bls_native_p50_c1_vs_inprocess"] = {
            "target": f"<= {NATIVE_LATENCY_TARGET} x in-process single image",
            "value": ratio,
            "met": ratio <= NATIVE_LATENCY_TARGET,
        }
    if "bls_native_cpu_vs_inprocess" in ratios:
        value = ratios["bls_native_cpu_vs_inprocess"]
        checks["bls_native_cpu_vs_inprocess"] = {
            "target": f"<= {NATIVE_CPU_TARGET} (server CPU per image, c=1, over in-process, batch 1)",
            "value": value,
            "met": value <= NATIVE_CPU_TARGET,
        }
    return checks


# --------------------------------------------------------------------------- result schema

REQUIRED_KEYS = {
    "schema_version": int,
    "machine": dict,
    "config": dict,
    "in_process": dict,
    "endpoints": dict,
    "images_per_s": dict,
    "latency_ms": dict,
    "ratios": dict,
    "targets": dict,
}
REQUIRED_NUMBERS = {
    "images_per_s": ("preprocessing", "network", "inprocess", "bls", "ensemble", "naive", "bls_c1"),
    "latency_ms": ("bls_p50_c1", "inprocess_single", "ensemble_p50_c1", "naive_p50_c1"),
    "ratios": tuple(TARGETS),
}
MACHINE_KEYS = ("cpu_count", "cpu_model", "platform", "python", "versions")


def _numbers(value: Any, path: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def check_result_schema(result: Mapping[str, Any]) -> None:
    """Raise :class:`BenchError` naming the first missing key or non-positive measurement.

    Every number under ``in_process``, ``endpoints``, ``images_per_s``, ``latency_ms`` and
    ``ratios`` must be finite and positive.
    """
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(result.get(key), kind):
            raise BenchError(f"result has no {kind.__name__} {key!r}")
    for section, keys in REQUIRED_NUMBERS.items():
        for key in keys:
            if not isinstance(result[section].get(key), (int, float)):
                raise BenchError(f"result has no number {section}.{key}")
    for key in MACHINE_KEYS:
        if key not in result["machine"]:
            raise BenchError(f"result has no machine.{key}")
    for endpoint in REQUIRED_ENDPOINTS:
        if not result["endpoints"].get(endpoint):
            raise BenchError(f"result has no measurements of endpoint {endpoint!r}")
    for section in ("in_process", "endpoints", "images_per_s", "latency_ms", "ratios", "cpu_ms_per_image"):
        for path, value in _numbers(result[section], section):
            if not (math.isfinite(value) and value > 0):
                raise BenchError(f"{path} is {value}: every measurement must be finite and positive")


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU count and model, OS, Python and the versions of the parts being measured."""
    from importlib.metadata import PackageNotFoundError, version

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("nvidia-pytriton", "nvidia-dali-cuda120", "onnxruntime", "tritonclient", "numpy", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


# --------------------------------------------------------------------------- measurements


def time_calls(function: Callable[[], object], *, duration_s: float, min_calls: int = 3) -> list[float]:
    """Call ``function`` for about ``duration_s`` (at least ``min_calls`` times); seconds per call."""
    times = []
    deadline = time.perf_counter() + duration_s
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- the run


@dataclass
class BenchOptions:
    """What one benchmark run measures and for how long."""

    repository: Path
    repeats: int = 3
    concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES
    duration_s: float = 5.0
    warmup_s: float = 1.5
    inprocess_duration_s: float = 2.0
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    quick: bool = False
    server_log: Path | None = None
    endpoints: tuple[str, ...] = ENDPOINT_KEYS
    images_per_request: int = 1
    # The input form of every request (contract.FORMS); padded keeps the CPU numbers comparable.
    request_form: str = contract.PADDED_FORM

    def __post_init__(self) -> None:
        check_request_form(self.request_form)
        ensembles = [key for key in self.endpoints if key.startswith("ensemble")]
        if self.request_form != contract.PADDED_FORM and ensembles:
            # Their first step is DALI, whose input is the padded rows: they have no IMAGE_BYTES.
            raise BenchError(
                f"the ensembles take padded rows only: --request-form {self.request_form} needs --endpoints without {', '.join(ensembles)}"
            )
        if self.images_per_request < 1:
            raise BenchError(f"--images-per-request must be at least 1, got {self.images_per_request}")
        if self.repeats < 1:
            raise BenchError(f"--repeats must be at least 1, got {self.repeats}")
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise BenchError("concurrencies must be positive")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise BenchError("durations must be positive")

    @classmethod
    def quick_options(cls, repository: Path, **overrides: Any) -> BenchOptions:
        """CI-sized: one repeat, two concurrencies, one-second windows."""
        values: dict[str, Any] = {
            "repeats": 1,
            "concurrencies": QUICK_CONCURRENCIES,
            "duration_s": 1.0,
            "warmup_s": 0.5,
            "inprocess_duration_s": 0.5,
            "batch_sizes": (1, 4),
            "quick": True,
        }
        values.update(overrides)
        return cls(repository=repository, **values)


@dataclass
class _InProcess:
    """The in-process parts, built like the server builds them from the repository."""

    preprocess: DaliPreprocessor
    network: Callable[[np.ndarray], np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_repository(cls, repository: Path, max_batch_size: int) -> _InProcess:
        from bls_pipeline.builder import model_config as mc
        from bls_pipeline.runtime.dali import DaliPreprocessor
        from bls_pipeline.runtime.device import GPU
        from bls_pipeline.runtime.network import load_network, network_options

        preprocessing_config = mc.read_config(repository / mc.PREPROCESSING / "config.pbtxt")
        dali_threads = int(mc.parameters_of(preprocessing_config).get("num_threads", 0))
        # dali.py, or the model.dali of a user's pipeline (build_repo --dali-pipeline).
        preprocess = DaliPreprocessor.from_version_dir(
            repository / mc.PREPROCESSING / "1",
            on_device=mc.device_of(preprocessing_config) == GPU,
            max_batch_size=max_batch_size,
            num_threads=dali_threads or None,
        )
        network_config = mc.read_config(repository / mc.NETWORK / "config.pbtxt")
        options = network_options(mc.parameters_of(network_config))
        network = load_network(repository / mc.NETWORK / "1", device=mc.device_of(network_config), **options)
        return cls(
            preprocess=preprocess,
            network=network,
            settings={
                "dali_threads": dali_threads,
                "network_threads": options["intra_op_threads"],
                "network_allow_spinning": options["allow_spinning"],
                "runtime": network.runtime,
            },
        )


def encoded_batch(images: Sequence[BenchImage], size: int, offset: int = 0) -> list[np.ndarray]:
    """``size`` images as uint8 rows for DALI, starting at ``offset`` and wrapping around."""
    return [np.frombuffer(images[(offset + i) % len(images)].data, np.uint8) for i in range(size)]


def _pipelined(
    parts: _InProcess, batches: Sequence[list[np.ndarray]], duration_s: float, min_calls: int
) -> tuple[list[float], float]:
    """Seconds per batch of the network on DALI's prefetched output (DALI's worker threads
    preparing the next batches meanwhile), and the process CPU seconds of those batches."""
    runs = parts.preprocess.prefetched(batches, depth=PREFETCH_DEPTH)
    try:
        for _ in range(PREFETCH_DEPTH + 1):  # warm-up: a new pipeline allocates on its first runs
            parts.network(next(runs))
        cpu_start = time.process_time()
        times = time_calls(lambda: parts.network(next(runs)), duration_s=duration_s, min_calls=min_calls)
        return times, time.process_time() - cpu_start
    finally:
        runs.close()


def _measure_in_process(parts: _InProcess, images: Sequence[BenchImage], options: BenchOptions) -> dict[str, Any]:
    """One repeat of the in-process measurements: images/s per stage and batch size
    (:data:`IN_PROCESS_STAGES`), the CPU time per image (ms) of the serial and the pipelined
    preprocessing + network, and the serial single-image latency (ms). Where the pipeline
    cannot prefetch, ``pipelined_absent`` says why and there is no ``pipelined`` figure."""
    out: dict[str, Any] = {stage: {} for stage in IN_PROCESS_STAGES}
    out.update(cpu_ms_per_image={}, pipelined_cpu_ms_per_image={})
    single_ms = []
    for size in options.batch_sizes:
        batches = [encoded_batch(images, size, offset) for offset in range(len(images))]
        min_calls = len(images) if size == 1 else 3
        tensors = [parts.preprocess(batch) for batch in batches]
        counter = {"pre": 0, "net": 0, "both": 0}

        def pre() -> None:
            parts.preprocess(batches[counter["pre"] % len(batches)])
            counter["pre"] += 1

        def net() -> None:
            parts.network(tensors[counter["net"] % len(tensors)])
            counter["net"] += 1

        def both() -> None:
            parts.network(parts.preprocess(batches[counter["both"] % len(batches)]))
            counter["both"] += 1

        both()  # warm-up: first runs of a batch size allocate
        for key, function in (("preprocessing", pre), ("network", net), ("inprocess", both)):
            # Process CPU time: this thread and DALI's and ONNX Runtime's worker threads.
            cpu_start = time.process_time()
            times = time_calls(function, duration_s=options.inprocess_duration_s, min_calls=min_calls)
            if key == "inprocess":
                out["cpu_ms_per_image"][size] = (time.process_time() - cpu_start) * 1e3 / (len(times) * size)
            out[key][size] = size / statistics.median(times)
            if key == "inprocess" and size == 1:
                single_ms = [t * 1e3 for t in times]
        if "pipelined_absent" not in out:
            try:
                times, cpu_s = _pipelined(parts, batches, options.inprocess_duration_s, min_calls)
            except RuntimeError as exc:  # DALI's: e.g. an operator that needs synchronous execution
                LOGGER.warning("no pipelined in-process figure: %s", exc)
                out["pipelined_absent"] = f"the pipelined run failed ({PREFETCH_DEPTH} batches prefetched): {exc}"
            else:
                out["pipelined"][size] = size / statistics.median(times)
                out["pipelined_cpu_ms_per_image"][size] = cpu_s * 1e3 / (len(times) * size)
    if "pipelined_absent" in out:
        del out["pipelined"], out["pipelined_cpu_ms_per_image"]
    out["single_ms"] = {1: statistics.median(single_ms)} if single_ms else {}
    return out


def served_max_batch_size(repository: Path) -> int:
    """The classifier's max batch: the largest batch the served path runs (natively hosted,
    the DALI model is unbatched and has none of its own)."""
    from bls_pipeline.builder import model_config as mc

    return mc.read_config(repository / mc.CLASSIFIER / "config.pbtxt").max_batch_size


def _repository_settings(repository: Path) -> dict[str, Any]:
    """The serving knobs of the measured repository, so a result says what it measured."""
    from bls_pipeline.builder import model_config as mc

    settings: dict[str, Any] = {}
    for name in (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK):
        config = mc.read_config(repository / name / "config.pbtxt")
        settings[name] = {
            "max_batch_size": config.max_batch_size,
            "instances": mc.instance_count(config),
            "max_queue_delay_us": config.dynamic_batching.max_queue_delay_microseconds,
            "preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
            "parameters": mc.parameters_of(config),
        }
    return settings


def run_benchmark(
    options: BenchOptions,
    images: Sequence[BenchImage],
    *,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Measure everything (see the module docstring) and return the JSON-ready result."""
    from bls_pipeline.devtools.bench.repository import write_bench_repository
    from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions

    if not images:
        raise BenchError("no images to benchmark")
    repository = Path(options.repository)
    if not (repository / "classifier" / "config.pbtxt").is_file():
        raise BenchError(f"{repository} is not a built repository: run tools/build_repo.py first")
    machine = machine_info()
    max_batch_size = served_max_batch_size(repository)
    batch_sizes = tuple(size for size in options.batch_sizes if size <= max_batch_size)
    options = dataclasses.replace(options, batch_sizes=batch_sizes)

    in_process_runs: list[dict[str, dict[int, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bls-bench-") as workdir:
        bench_repo = Path(workdir) / "model_repository"
        names = write_bench_repository(repository, bench_repo)
        skipped = [key for key in options.endpoints if key not in names]
        if skipped:
            progress(
                f"not measured: {', '.join(skipped)} (Triton's own backends are not built: tools/build_backends.py)"
            )
        endpoint_keys = [key for key in options.endpoints if key in names]
        endpoint_runs: dict[str, dict[int, list[LoadSample]]] = {
            key: {c: [] for c in options.concurrencies} for key in endpoint_keys
        }
        progress("building the in-process DALI pipeline and network")
        # From the Python-hosted sub-models: the same files and settings as every endpoint.
        parts = _InProcess.from_repository(bench_repo, max_batch_size)
        server_options = ServerOptions(
            model_repository=bench_repo, http_port=0, grpc_port=0, metrics_port=0, log_path=options.server_log
        )
        progress(f"starting tritonserver on {bench_repo}")
        with LocalTritonServer(server_options) as server:
            # Over HTTP, as users' HTTP clients; each request sent once: a shed one fails the point.
            targets = {
                key: Target(
                    host_port(server.url),
                    retry=NO_RETRY,
                    model_name=names[key],
                    protocol="http",
                    form=options.request_form,
                )
                for key in endpoint_keys
            }
            encoded = [image.data for image in images]
            groups = cyclic_groups(encoded, options.images_per_request)
            progress("warming up every endpoint (until each answers, with a bound that scales with this machine)")
            for key in endpoint_keys:
                single_s = warm_up(targets[key], encoded, concurrency=max(options.concurrencies))
                progress(f"  {key}: one request alone {single_s * 1e3:.0f} ms")
            for repeat in range(options.repeats):
                progress(f"repeat {repeat + 1}/{options.repeats}: in process, batch sizes {list(batch_sizes)}")
                in_process_runs.append(_measure_in_process(parts, images, options))
                for concurrency in options.concurrencies:
                    for key in endpoint_keys:
                        sample = measure_window(
                            targets[key],
                            groups,
                            concurrency=concurrency,
                            duration_s=options.duration_s,
                            warmup_s=options.warmup_s,
                            server_cpu=server.cpu_seconds,
                        )
                        endpoint_runs[key][concurrency].append(sample)
                        progress(
                            f"repeat {repeat + 1}/{options.repeats}: {key:8s} c={concurrency:<2d} "
                            f"{sample.images_per_s:6.1f} images/s, p50 {percentile(sample.latencies_s, 50) * 1e3:6.1f} ms"
                            + (
                                f" (slow: every request outlasted the {options.duration_s:g} s window)"
                                if sample.slow
                                else ""
                            )
                        )
    return assemble_result(
        options, images, machine, parts.settings, _repository_settings(repository), in_process_runs, endpoint_runs
    )


def assemble_result(
    options: BenchOptions,
    images: Sequence[BenchImage],
    machine: Mapping[str, Any],
    runtime_settings: Mapping[str, Any],
    repository_settings: Mapping[str, Any],
    in_process_runs: Sequence[Mapping[str, Any]],
    endpoint_runs: Mapping[str, Mapping[int, Sequence[LoadSample]]],
) -> dict[str, Any]:
    """The JSON result from raw repeats: medians with spread, best values, ratios, targets.

    ``images_per_s.inprocess`` and ``cpu_ms_per_image.inprocess_batch_N`` are the serial
    in-process figures; ``images_per_s.pipelined`` and ``cpu_ms_per_image.pipelined_batch_N``
    the pipelined ones; ``in_process_limit`` names the one the ``*_vs_inprocess`` ratios and
    targets divide by, and why the pipelined one is absent if it is.
    """
    absent = next((run["pipelined_absent"] for run in in_process_runs if "pipelined_absent" in run), None)
    stages = [stage for stage in IN_PROCESS_STAGES if not (stage == "pipelined" and absent)]
    in_process: dict[str, Any] = {}
    for key in stages:
        in_process[key] = {
            f"batch_{size}": Spread.of([run[key][size] for run in in_process_runs]).to_json()
            for size in options.batch_sizes
        }
    single = (
        Spread.of([run["single_ms"][1] for run in in_process_runs if run.get("single_ms")])
        if 1 in options.batch_sizes
        else None
    )
    cpu_ms_per_image: dict[str, float] = {}
    if all(run.get("cpu_ms_per_image") for run in in_process_runs):
        in_process["inprocess_cpu_ms_per_image"] = {
            f"batch_{size}": Spread.of([run["cpu_ms_per_image"][size] for run in in_process_runs]).to_json()
            for size in options.batch_sizes
        }
        for size in options.batch_sizes:
            cpu_ms_per_image[f"inprocess_batch_{size}"] = in_process["inprocess_cpu_ms_per_image"][f"batch_{size}"][
                "median"
            ]
    if not absent and all(run.get("pipelined_cpu_ms_per_image") for run in in_process_runs):
        in_process["pipelined_cpu_ms_per_image"] = {
            f"batch_{size}": Spread.of([run["pipelined_cpu_ms_per_image"][size] for run in in_process_runs]).to_json()
            for size in options.batch_sizes
        }
        for size in options.batch_sizes:
            cpu_ms_per_image[f"pipelined_batch_{size}"] = in_process["pipelined_cpu_ms_per_image"][f"batch_{size}"][
                "median"
            ]

    endpoints: dict[str, Any] = {}
    for key, by_concurrency in endpoint_runs.items():
        endpoints[key] = {}
        for concurrency, samples in by_concurrency.items():
            percentiles = [latency_percentiles(sample.latencies_s) for sample in samples]
            endpoints[key][f"c{concurrency}"] = {
                "concurrency": concurrency,
                "images_per_s": Spread.of([sample.images_per_s for sample in samples]).to_json(),
                "latency_ms": {q: Spread.of([p[q] for p in percentiles]).to_json() for q in ("p50", "p90", "p99")},
                "requests": sum(sample.requests for sample in samples),
                # Some repeat's requests all outlasted the window (devtools.load.Window.sample).
                "slow": any(sample.slow for sample in samples),
            }
            cpu = [sample.server_cpu_ms_per_image for sample in samples]
            if cpu and all(value is not None for value in cpu):
                spread = Spread.of(cpu).to_json()  # type: ignore[arg-type]
                endpoints[key][f"c{concurrency}"]["server_cpu_ms_per_image"] = spread
                cpu_ms_per_image[f"{key}_c{concurrency}"] = spread["median"]

    def best(stage: str) -> tuple[float, str]:
        return max((value["median"], name) for name, value in in_process[stage].items())

    def best_endpoint(key: str) -> tuple[float, str]:
        return max((value["images_per_s"]["median"], name) for name, value in endpoints[key].items())

    images_per_s: dict[str, Any] = {stage: best(stage)[0] for stage in stages}
    best_at = {stage: best(stage)[1] for stage in stages}
    limit = limit_stage(images_per_s)
    in_process_limit: dict[str, Any] = {"stage": limit, "images_per_s": images_per_s[limit], "at": best_at[limit]}
    if absent:
        in_process_limit["pipelined_absent"] = absent
    for key in endpoints:
        images_per_s[key], best_at[key] = best_endpoint(key)
        if "c1" in endpoints[key]:
            images_per_s[f"{key}_c1"] = endpoints[key]["c1"]["images_per_s"]["median"]
    latency_ms: dict[str, float] = {}
    if single is not None:
        latency_ms["inprocess_single"] = single.median
    for key in endpoints:
        if "c1" in endpoints[key]:
            latency_ms[f"{key}_p50_c1"] = endpoints[key]["c1"]["latency_ms"]["p50"]["median"]
    ratios = compute_ratios(images_per_s) if all(k in images_per_s for k in ("bls", "ensemble", "naive")) else {}
    if ratios:
        ratios.update(cpu_ratios(cpu_ms_per_image))
    timed = "inprocess_single" in latency_ms and "bls_p50_c1" in latency_ms
    targets = check_targets(ratios, latency_ms, limit=limit) if ratios and timed else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "machine": dict(machine),
        "config": {
            "repeats": options.repeats,
            "quick": options.quick,
            "concurrencies": list(options.concurrencies),
            "batch_sizes": list(options.batch_sizes),
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "inprocess_duration_s": options.inprocess_duration_s,
            "images_per_request": options.images_per_request,
            "request_form": options.request_form,
            "images": [{"name": i.name, "bytes": len(i.data), "width": i.width, "height": i.height} for i in images],
            "runtime": dict(runtime_settings),
            "repository": dict(repository_settings),
            "ensemble_postprocessing": "server-side, Python model classifier_postprocess",
        },
        "in_process": {**in_process, **({"single_image_ms": single.to_json()} if single else {})},
        "endpoints": endpoints,
        "images_per_s": images_per_s,
        "best_at": best_at,
        "in_process_limit": in_process_limit,
        "latency_ms": latency_ms,
        # Server: tritonserver and every stub, from /proc, per image answered in the window;
        # in process: this process's CPU time for preprocessing + network, serial
        # (inprocess_batch_N) and pipelined (pipelined_batch_N).
        "cpu_ms_per_image": cpu_ms_per_image,
        "ratios": ratios,
        "targets": targets,
    }
