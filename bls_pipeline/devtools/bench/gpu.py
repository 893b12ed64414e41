"""The benchmark on a GPU: the in-process limit, then the served endpoints under perf_analyzer.

Same table as the CPU benchmark (:mod:`bls_pipeline.devtools.bench.run`), measured on one
GPU in one run, so that every ratio compares numbers of the same machine and minute:

1. DALI alone, the network alone and both in one process, at the repository's batch sizes:
   DALI's ``mixed`` decoder from the repository's own ``dali.py`` and the network runtime
   the server hosts (:class:`TorchCudaNetwork`), the batch handed from DALI to torch on the
   GPU; both one batch after the other (*serial*, as Triton's DALI backend runs its
   pipeline) and *pipelined* (DALI prefetching, the network overlapped: the in-process limit
   every served figure is compared with), the pipelined one also on other photo sets;
2. ``classifier`` and the ensemble of the same two models, one image per request, driven by
   ``perf_analyzer`` over gRPC and HTTP at rising concurrency, with Triton's per-model
   statistics (mean batch, queue and compute time per execution), the GPU's SM and JPEG-engine
   utilization and the host CPU per image by role (:mod:`bls_pipeline.devtools.bench.cpu`);
3. single-image latency at concurrency 1, where it goes: in process (DALI, the network,
   both), each sub-model served alone, the ensemble and ``classifier``;
4. the request forms (:mod:`bls_pipeline.devtools.bench.forms`): zero-padded rows against
   unpadded ``IMAGE_BYTES``, over gRPC and HTTP, at several images per request, with the
   project's client as the load generator; on the same photographs (comparable with the
   in-process limit), and the client's default point on the ImageNet-sized photographs and
   on photographs of varied sizes (where padding wastes most), each against its own
   pipelined limit.

Example::

    result = run_gpu_benchmark(GpuBenchOptions(repository=Path("build/gpu_repository")), benchmark_images())
    print(format_gpu_table(result))
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bls_pipeline.devtools.bench.cpu import CpuByRole, CpuSnapshot, cpu_ms_per_image
from bls_pipeline.devtools.bench.forms import CLIENT_DEFAULT_POINT, DEFAULT_FORM_POINTS, form_loads, measure_form
from bls_pipeline.devtools.bench.images import BenchImage, imagenet_sized_images, varied_images
from bls_pipeline.devtools.bench.perf import (
    RANDOM_DATA,
    GpuSampler,
    PerfPoint,
    classifier_stages_ms,
    gpu_process_memory,
    model_statistics,
    run_perf_analyzer,
    settled_metrics,
    statistics_delta,
    write_input_data,
)
from bls_pipeline.devtools.bench.run import (
    IN_PROCESS_STAGES,
    PREFETCH_DEPTH,
    STAGE_LABELS,
    encoded_batch,
    machine_info,
    served_max_batch_size,
)
from bls_pipeline.errors import BenchError

DEFAULT_GPU_CONCURRENCIES = (1, 16, 64, 256)
DEFAULT_GPU_BATCHES = (1, 8, 32, 64, 128)
# The photo sets besides the benchmark's own (one size): the client's default form and the
# pipelined in-process limit are measured on each, since throughput per byte varies most.
SAME_SIZE = "same size"
PHOTO_SETS: dict[str, Callable[[], list[BenchImage]]] = {
    "imagenet-sized": imagenet_sized_images,
    "varied sizes": varied_images,
}
# The endpoints that are this project's BLS classifier (the others are ensembles).
BLS_ENDPOINTS = ("bls_native", "bls")


@dataclass
class GpuBenchOptions:
    """What one GPU run measures."""

    repository: Path
    concurrencies: tuple[int, ...] = DEFAULT_GPU_CONCURRENCIES
    batch_sizes: tuple[int, ...] = DEFAULT_GPU_BATCHES
    protocols: tuple[str, ...] = ("grpc", "http")
    # HTTP is measured for these endpoints only: one comparison of the protocols is enough.
    http_endpoints: tuple[str, ...] = ("bls_native",)
    # The native DALI backend with the GPU network, as served (bls_native), its ensemble, and
    # the Python-hosted DALI fallback (bls).
    endpoints: tuple[str, ...] = ("bls_native", "ensemble_native", "bls")
    # Request forms: (images per request, requests in flight) points; () skips them.
    form_points: tuple[tuple[int, int], ...] = DEFAULT_FORM_POINTS
    # Keys of PHOTO_SETS measured besides the benchmark's photographs.
    other_photo_sets: tuple[str, ...] = ("imagenet-sized", "varied sizes")
    inprocess_duration_s: float = 3.0
    # The pipelined limit is measured from this batch size up (it needs batches to overlap).
    pipelined_min_batch: int = 32
    measurement_ms: int = 3000
    server_log: Path | None = None


class InProcessGpu:
    """DALI (``mixed``) feeding the served network runtime in this process, on GPU 0."""

    def __init__(self, repository: Path, max_batch_size: int, *, overrides: Mapping[str, Any] | None = None) -> None:
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        from bls_pipeline.builder import model_config as mc
        from bls_pipeline.layout import TORCH_WEIGHTS_FILE
        from bls_pipeline.runtime.dali import load_pipeline_module, pipeline_from_settings
        from bls_pipeline.runtime.torch_network import TorchCudaNetwork

        self._torch, self._feed_ndarray = torch, feed_ndarray
        version = repository / mc.PREPROCESSING / "1"
        module = load_pipeline_module(version / "dali.py")
        # overrides: DALI knobs to try without rebuilding (num_threads, hw_decoder_load).
        settings = {**module.load_settings(version), **(overrides or {})}
        self.settings = settings
        self.crop = settings["crop"]
        self.max_batch_size = max_batch_size

        def make_pipeline(prefetch_queue_depth: int) -> Any:
            pipe = pipeline_from_settings(
                module,
                {**settings, "decoder_device": "mixed"},
                max_batch_size=max_batch_size,
                num_threads=settings["num_threads"],
                device_id=0,
                prefetch_queue_depth=prefetch_queue_depth,
            )
            pipe.build()
            return pipe

        self._make_pipeline = make_pipeline
        self._pipe = make_pipeline(1)
        self.input_name = module.INPUT_NAME
        self.network = TorchCudaNetwork.from_file(
            repository / mc.NETWORK / "1" / TORCH_WEIGHTS_FILE, max_batch_size=max_batch_size
        )
        self._staging = torch.empty((max_batch_size, 3, self.crop, self.crop), device="cuda", dtype=torch.float32)

    def _to_torch(self, output) -> Any:
        tensor = output.as_tensor()
        count = tensor.shape()[0]
        target = self._staging[:count]
        self._feed_ndarray(tensor, target, cuda_stream=self._torch.cuda.current_stream())
        return target

    def preprocess(self, batch: list[np.ndarray]) -> Any:
        """Encoded rows -> the preprocessed batch on the GPU (synchronous)."""
        self._pipe.feed_input(self.input_name, batch)
        (output,) = self._pipe.run()
        return self._to_torch(output)

    def prime(self, full_batch: list[np.ndarray]) -> None:
        """Run one batch of the maximum size first, as the served model's warm-up does: the
        mixed decoder sizes its share of hardware-decoded JPEGs from the first batch it runs."""
        self.preprocess(full_batch)
        self._torch.cuda.current_stream().synchronize()

    def pipelined_throughput(
        self,
        batches: Sequence[list[np.ndarray]],
        full_batch: list[np.ndarray],
        duration_s: float,
        *,
        warm_up_s: float = 1.0,
    ) -> float:
        """Images/s of DALI feeding the network the way one process runs it well: a pipeline
        prefetching ``PREFETCH_DEPTH`` batches (``exec_async``, ``exec_pipelined``), fed one
        more ahead of ``run()`` (:func:`~bls_pipeline.runtime.dali.prefetched_outputs`); its GPU output taken through DLPack into one of two staging
        tensors (DALI reuses its buffer at the next ``run()``); the network on it; the logits
        copied to pinned host memory asynchronously and waited for one step later, so batch
        k+1's preprocessing overlaps batch k's network. Primed like :meth:`prime`."""
        from bls_pipeline.runtime.dali import prefetched_outputs

        torch = self._torch
        pipe = self._make_pipeline(PREFETCH_DEPTH)
        runs = prefetched_outputs(pipe, self.input_name, batches, PREFETCH_DEPTH, first=full_batch)
        size = len(batches[0])
        stream = torch.cuda.current_stream()

        def dali_run() -> Any:
            return torch.from_dlpack(next(runs).as_tensor())  # DALI's buffer, valid until the next run

        with torch.inference_mode():
            dali_run()  # the full batch: see prime()
            stage = [torch.empty((size, 3, self.crop, self.crop), device="cuda") for _ in range(2)]
            classes = int(self.network.logits(stage[0]).shape[1])
            host = [torch.empty((size, classes), pin_memory=True) for _ in range(2)]
            done = [torch.cuda.Event() for _ in range(2)]
            copied = torch.cuda.Event()
            steps = {"n": 0}

            def step() -> None:
                i = steps["n"] % 2
                stage[i].copy_(dali_run(), non_blocking=True)
                copied.record(stream)
                host[i].copy_(self.network.logits(stage[i]), non_blocking=True)
                done[i].record(stream)
                if steps["n"] > 0:
                    done[1 - i].synchronize()  # the previous batch's logits are on the host
                copied.synchronize()  # before the next run() may reuse DALI's buffer
                steps["n"] += 1

            rate = _timed(step, size, duration_s, warm_up_s, torch.cuda.synchronize)
        runs.close()
        del runs, pipe
        return rate

    def throughput(self, batches: Sequence[list[np.ndarray]], stage: str, duration_s: float) -> float:
        """Images/s of ``stage`` (``preprocessing``, ``network`` or ``inprocess``) over ``batches``."""
        torch = self._torch
        size = len(batches[0])
        runs, start = 0, time.perf_counter()
        if stage == "network":
            # Random input: DALI's output is not needed to time the network alone.
            tensor = torch.randn((size, 3, self.crop, self.crop), device="cuda")
            while time.perf_counter() - start < duration_s:
                self.network.logits(tensor)
                runs += 1
            torch.cuda.synchronize()
        else:
            while time.perf_counter() - start < duration_s:
                images = self.preprocess(batches[runs % len(batches)])
                if stage == "inprocess":
                    self.network.logits(images).cpu()
                else:
                    torch.cuda.current_stream().synchronize()
                runs += 1
        return runs * size / (time.perf_counter() - start)

    def single_image_ms(self, images: Sequence[BenchImage], stage: str = "inprocess", repeats: int = 200) -> float:
        """Median latency of one image through ``stage``, synchronous: ``preprocessing`` (bytes to
        the preprocessed image on the GPU), ``network`` (that image to logits on the host) or
        ``inprocess`` (both, bytes to logits on the host)."""
        torch = self._torch
        prepared = self.preprocess([np.frombuffer(images[0].data, np.uint8)]).clone() if stage == "network" else None
        times = []
        for index in range(repeats):
            row = [np.frombuffer(images[index % len(images)].data, np.uint8)]
            start = time.perf_counter()
            if stage == "network":
                self.network.logits(prepared).cpu()
            elif stage == "preprocessing":
                self.preprocess(row)
                torch.cuda.current_stream().synchronize()
            else:
                self.network.logits(self.preprocess(row)).cpu()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


def _timed(step: Callable[[], None], size: int, duration_s: float, warm_up_s: float, sync: Callable[[], None]) -> float:
    """Images/s of ``step`` (one batch of ``size``) over ``duration_s``, after ``warm_up_s``."""
    end = time.perf_counter() + warm_up_s
    while time.perf_counter() < end:
        step()
    sync()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration_s:
        step()
        steps += 1
    sync()
    return steps * size / (time.perf_counter() - start)


def _batches(images: Sequence[BenchImage], size: int) -> list[list[np.ndarray]]:
    return [encoded_batch(images, size, offset) for offset in range(0, max(len(images), size * 4), size)]


def measure_in_process(
    repository: Path,
    images: Sequence[BenchImage],
    options: GpuBenchOptions,
    max_batch_size: int,
    progress: Callable[[str], None],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The in-process rows: images/s per stage, mode and batch size; single-image latency."""
    parts = InProcessGpu(repository, max_batch_size, overrides=overrides)
    full_batch = encoded_batch(images, max_batch_size, 0)
    parts.prime(full_batch)
    rows: dict[str, Any] = {
        "settings": {k: parts.settings[k] for k in ("num_threads", "hw_decoder_load") if k in parts.settings}
    }
    for size in (s for s in options.batch_sizes if s <= max_batch_size):
        batches = _batches(images, size)
        for stage in IN_PROCESS_STAGES:
            if stage == "pipelined":
                if size < options.pipelined_min_batch:
                    continue
                rate = parts.pipelined_throughput(batches, full_batch, options.inprocess_duration_s)
            else:
                parts.throughput(batches, stage, 0.5)  # warm-up
                rate = parts.throughput(batches, stage, options.inprocess_duration_s)
            rows.setdefault(stage, {})[size] = rate
            progress(f"in process {stage:13s} batch {size:<3d} {rate:8.0f} images/s")
    # The pipelined limit on the other photo sets, at the largest batch: the reference of the
    # client's default form measured on them.
    largest = max((s for s in options.batch_sizes if s <= max_batch_size), default=max_batch_size)
    for label in options.other_photo_sets:
        photos = PHOTO_SETS[label]()
        rate = parts.pipelined_throughput(
            _batches(photos, largest), encoded_batch(photos, max_batch_size, 0), options.inprocess_duration_s
        )
        rows.setdefault("pipelined_by_photos", {})[label] = {largest: rate}
        progress(f"in process pipelined     batch {largest:<3d} {rate:8.0f} images/s ({label})")
    rows["single_image_ms"] = parts.single_image_ms(images)
    rows["single_image_stage_ms"] = {
        stage: parts.single_image_ms(images, stage) for stage in ("preprocessing", "network")
    }
    progress(
        f"in process single image {rows['single_image_ms']:.2f} ms (preprocessing "
        f"{rows['single_image_stage_ms']['preprocessing']:.2f}, network {rows['single_image_stage_ms']['network']:.2f})"
    )
    return rows


def run_gpu_benchmark(
    options: GpuBenchOptions, images: Sequence[BenchImage], *, progress: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Measure everything in the module docstring; returns the JSON-ready result."""
    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.client import host_port
    from bls_pipeline.devtools.bench.repository import write_bench_repository
    from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions

    repository = Path(options.repository)
    if not (repository / mc.CLASSIFIER / "config.pbtxt").is_file():
        raise BenchError(f"{repository} is not a built repository: run tools/build_repo.py --device gpu first")
    max_batch_size = served_max_batch_size(repository)
    result: dict[str, Any] = {"machine": machine_info(), "options": {k: str(v) for k, v in vars(options).items()}}
    result["in_process"] = measure_in_process(repository, images, options, max_batch_size, progress)

    endpoints: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bls-gpu-bench-") as workdir:
        bench_repo = Path(workdir) / "model_repository"
        names = write_bench_repository(repository, bench_repo)
        missing = [key for key in options.endpoints if key not in names]
        if missing:
            raise BenchError(
                f"the benchmark repository has no {missing}: build the native backends (tools/build_backends.py)"
            )
        data = write_input_data(images, Path(workdir) / "data.json")
        server_options = ServerOptions(
            model_repository=bench_repo, http_port=0, grpc_port=0, metrics_port=0, log_path=options.server_log
        )
        with LocalTritonServer(server_options) as server:
            http_url = host_port(server.url)
            grpc_url = host_port(server.grpc_url)
            meter = CpuByRole(server.process.pid)
            result["gpu_memory_mib"] = gpu_process_memory()
            for protocol in options.protocols:
                url = grpc_url if protocol == "grpc" else http_url
                for key in options.endpoints:
                    if protocol == "http" and key not in options.http_endpoints:
                        continue
                    _warm_up(names[key], data, url, protocol)
                    # The classifiers' own stage times, settled after the warm-up; each point's
                    # closing scrape opens the next one.
                    stages = settled_metrics(server.options.metrics_port) if key in BLS_ENDPOINTS else None
                    for concurrency in options.concurrencies:
                        cpu_before = meter.snapshot()
                        point = _point_with_statistics(
                            names[key],
                            data,
                            url=url,
                            protocol=protocol,
                            concurrency=concurrency,
                            measurement_ms=options.measurement_ms,
                            http_url=http_url,
                        )
                        # Over all of perf_analyzer's windows, warm-up included: CPU time of each
                        # role per image the server answered in that time.
                        _add_cpu_per_image(point.extra, meter, cpu_before, names[key])
                        if stages is not None:
                            closing = settled_metrics(server.options.metrics_port)
                            point.extra["classifier_stages_ms"] = classifier_stages_ms(stages, closing, names[key])
                            stages = closing
                        point.extra["endpoint"] = key
                        endpoints.append(point.as_dict())
                        progress(
                            f"{key:8s} {protocol:4s} c={concurrency:<4d} {point.images_per_s:8.0f} images/s "
                            f"p50 {point.p50_ms:6.1f} p99 {point.p99_ms:6.1f} ms GPU {point.gpu_util_percent or 0:4.0f} %"
                        )
            result["sub_models_alone"] = _sub_models_alone(
                bench_repo / names["bls_native"],
                images,
                grpc_url,
                http_url,
                Path(workdir),
                options.measurement_ms,
                progress,
            )
            if options.form_points:
                result["forms"] = _measure_forms(
                    options, names["bls_native"], images, {"grpc": grpc_url, "http": http_url}, meter, progress
                )
    result["endpoints"] = endpoints
    result["summary"] = summarize(result)
    result["single_image_latency_ms"] = latency_breakdown(result)
    return result


def _sub_models_alone(
    classifier: Path,
    images: Sequence[BenchImage],
    grpc_url: str,
    http_url: str,
    workdir: Path,
    measurement_ms: int,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The two models ``classifier`` calls, each loaded alone at concurrency 1 over gRPC, one
    image per request: what a request costs without the classifier's BLS hops.

    The preprocessing model gets the photographs (one ``[1, bytes]`` batch each where it is
    unbatched); the network gets perf_analyzer's random tensors of its input shape, in host
    memory (the classifier hands it a GPU tensor).
    """
    from bls_pipeline import contract
    from bls_pipeline.builder import model_config as mc

    parameters = mc.read_config(classifier / "config.pbtxt").parameters
    preprocessing = parameters["preprocessing_model"].string_value
    network = parameters["network_model"].string_value
    unbatched = mc.read_config(classifier.parent / preprocessing / "config.pbtxt").max_batch_size == 0
    data = write_input_data(images, workdir / "preprocessing_data.json", contract.DALI_INPUT, unbatched=unbatched)
    points = []
    for role, model, inputs in (("preprocessing", preprocessing, data), ("network", network, RANDOM_DATA)):
        _warm_up(model, inputs, grpc_url, "grpc", concurrency=1, workdir=workdir)
        point = _point_with_statistics(
            model,
            inputs,
            url=grpc_url,
            protocol="grpc",
            concurrency=1,
            measurement_ms=measurement_ms,
            http_url=http_url,
            workdir=workdir,
        )
        point.extra["role"] = role
        points.append(point.as_dict())
        progress(f"{role} alone ({model}) grpc c=1 p50 {point.p50_ms:.2f} ms")
    return points


def _point_with_statistics(
    model: str,
    data: Path | str,
    *,
    url: str,
    protocol: str,
    concurrency: int,
    measurement_ms: int,
    http_url: str,
    workdir: Path | None = None,
) -> PerfPoint:
    """One :func:`run_perf_analyzer` point with the GPU's utilization and Triton's per-model
    statistics of its window (``extra["models"]``)."""
    before = model_statistics(http_url)
    with GpuSampler() as sampler:
        point = run_perf_analyzer(
            model,
            data,
            url=url,
            protocol=protocol,
            concurrency=concurrency,
            measurement_ms=measurement_ms,
            workdir=workdir,
        )
    point.gpu_util_percent = sampler.mean()
    point.extra["jpeg_util_percent"] = sampler.mean_jpeg()
    point.extra["models"] = statistics_delta(before, model_statistics(http_url))
    return point


def _add_cpu_per_image(extra: dict[str, Any], meter: CpuByRole, before: CpuSnapshot, model: str) -> None:
    """``extra["cpu_ms_per_image"]``: each role's CPU since ``before`` per image ``model``
    answered (from ``extra["models"]``); ``extra["server_cpu_ms_per_image"]``: their server total."""
    answered = extra["models"].get(model, {})
    served = answered.get("executions", 0) * answered.get("mean_batch", 0)
    extra["cpu_ms_per_image"] = cpu_ms_per_image(meter.delta(before, meter.snapshot()), served)
    extra["server_cpu_ms_per_image"] = (extra["cpu_ms_per_image"] or {}).get("server total")


def _warm_up(
    model: str, data: Path | str, url: str, protocol: str, *, concurrency: int = 8, workdir: Path | None = None
) -> None:
    """A short load before the measured ones; whether perf_analyzer calls it stable does not matter."""
    try:
        run_perf_analyzer(
            model, data, url=url, protocol=protocol, concurrency=concurrency, measurement_ms=1500, workdir=workdir
        )
    except BenchError:
        pass


def _measure_forms(
    options: GpuBenchOptions,
    model: str,
    images: Sequence[BenchImage],
    urls: dict[str, str],
    meter: CpuByRole,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every form point on the benchmark's photographs (all protocols), then the client's
    default point on each other photo set (gRPC), each with Triton's per-model statistics,
    the GPU's and JPEG engine's utilization and the CPU per image by role."""
    plan = [
        (SAME_SIZE, images, load)
        for load in form_loads(model, urls, protocols=options.protocols, points=options.form_points)
    ]
    for label in options.other_photo_sets:
        plan += [
            (label, PHOTO_SETS[label](), load)
            for load in form_loads(model, urls, protocols=("grpc",), points=(CLIENT_DEFAULT_POINT,))
        ]
    points = []
    for label, photos, load in plan:
        before, cpu_before = model_statistics(urls["http"]), meter.snapshot()
        with GpuSampler() as sampler:
            point = measure_form(load, photos)
        point.extra = {
            "images": label,
            "models": statistics_delta(before, model_statistics(urls["http"])),
            "gpu_util_percent": sampler.mean(),
            "jpeg_util_percent": sampler.mean_jpeg(),
        }
        # Over the client processes' whole run (start and warm-up included).
        _add_cpu_per_image(point.extra, meter, cpu_before, model)
        points.append(point.as_dict())
        progress(
            f"form {load.form:6s} {load.protocol:4s} {label:14s} {load.images_per_request:3d}/request c={load.concurrency:<3d} "
            f"{point.images_per_s:8.0f} images/s p50 {point.p50_ms:6.1f} p99 {point.p99_ms:6.1f} ms "
            f"{point.request_bytes / 1e6:6.2f} MB/request, server CPU {point.extra['server_cpu_ms_per_image'] or 0:.2f} ms/image"
        )
    return points


def summarize(result: Mapping[str, Any], p99_limit_ms: float = 150.0) -> dict[str, Any]:
    """Best points and the issue's ratios: classifier vs in-process limit, vs ensemble; latency."""
    in_process = result["in_process"]
    serial = max(in_process.get("inprocess", {0: 0}).values())
    limit = max(in_process.get("pipelined", {0: serial}).values())

    def best(endpoint: str) -> Mapping[str, Any] | None:
        points = [p for p in result["endpoints"] if p["extra"]["endpoint"] == endpoint and p["p99_ms"] <= p99_limit_ms]
        return max(points, key=lambda p: p["images_per_s"], default=None)

    bls, ensemble = best("bls_native"), best("ensemble_native")
    single = [p for p in result["endpoints"] if p["extra"]["endpoint"] == "bls_native" and p["concurrency"] == 1]
    summary: dict[str, Any] = {"in_process_limit": limit, "in_process_serial": serial, "p99_limit_ms": p99_limit_ms}
    if bls:
        summary["bls_best"] = {k: bls[k] for k in ("images_per_s", "protocol", "concurrency", "p99_ms")}
        summary["bls_over_in_process"] = bls["images_per_s"] / limit if limit else None
    if bls and ensemble:
        summary["bls_over_ensemble"] = bls["images_per_s"] / ensemble["images_per_s"]
    forms = [p for p in result.get("forms", []) if p["extra"]["images"] == "same size" and p["p99_ms"] <= p99_limit_ms]
    best_form = max(forms, key=lambda p: p["images_per_s"], default=None)
    if best_form:
        summary["bls_best_multi_image"] = {
            k: best_form[k] for k in ("images_per_s", "protocol", "form", "images_per_request", "concurrency", "p99_ms")
        }
        summary["bls_multi_image_over_in_process"] = best_form["images_per_s"] / limit if limit else None
    limits = {
        SAME_SIZE: limit,
        **{label: max(rates.values()) for label, rates in in_process.get("pipelined_by_photos", {}).items()},
    }
    for label, set_limit in limits.items():
        points = [
            p
            for p in result.get("forms", [])
            if p["extra"]["images"] == label
            and p["form"] == "bytes"
            and (p["images_per_request"], p["concurrency"]) == CLIENT_DEFAULT_POINT
            and p["protocol"] == "grpc"
        ]
        if points and set_limit:
            summary.setdefault("client_default_by_photos", {})[label] = {
                "images_per_s": points[0]["images_per_s"],
                "p99_ms": points[0]["p99_ms"],
                "pipelined_limit": set_limit,
                "over_pipelined_limit": points[0]["images_per_s"] / set_limit,
                "server_cpu_ms_per_image": points[0]["extra"].get("server_cpu_ms_per_image"),
            }
    if single:
        summary["bls_single_image_p50_ms"] = min(p["p50_ms"] for p in single)
        summary["in_process_single_image_ms"] = in_process.get("single_image_ms")
    return summary


def latency_breakdown(result: Mapping[str, Any]) -> dict[str, float]:
    """One image at concurrency 1, in ms: in process (each stage and both), each sub-model
    served alone, the ensemble and the classifier (gRPC p50); what was measured only."""
    in_process = result["in_process"]
    rows = {f"in_process_{stage}": ms for stage, ms in in_process.get("single_image_stage_ms", {}).items()}
    if "single_image_ms" in in_process:
        rows["in_process_both"] = in_process["single_image_ms"]
    for point in result.get("sub_models_alone", []):
        rows[f"served_{point['extra']['role']}_alone"] = point["p50_ms"]
    for endpoint, key in (("ensemble_native", "ensemble"), ("bls_native", "classifier")):
        point = single_image_point(result, endpoint)
        if point:
            rows[key] = point["p50_ms"]
    return rows


def single_image_point(result: Mapping[str, Any], endpoint: str = "bls_native") -> Mapping[str, Any]:
    """The gRPC point of ``endpoint`` at concurrency 1, or ``{}`` when it was not measured."""
    points = [
        p
        for p in result["endpoints"]
        if p["extra"]["endpoint"] == endpoint and p["concurrency"] == 1 and p["protocol"] == "grpc"
    ]
    return points[0] if points else {}


def format_gpu_table(result: Mapping[str, Any]) -> str:
    """The human-readable table of a :func:`run_gpu_benchmark` result."""
    lines = ["IN PROCESS (images/s)", f"{'stage':28s} " + " ".join(f"{'b=' + str(b):>8s}" for b in _sizes(result))]
    for stage, rates in result["in_process"].items():
        if stage in IN_PROCESS_STAGES:
            label = STAGE_LABELS.get(stage, stage)
            lines.append(
                f"{label:28s} " + " ".join(f"{rates.get(b, rates.get(str(b), 0)):8.0f}" for b in _sizes(result))
            )
    for label, rates in result["in_process"].get("pipelined_by_photos", {}).items():
        lines.append(f"pipelined, {label:17s} " + ", ".join(f"b={b}: {rate:.0f}" for b, rate in rates.items()))
    lines.append(f"single image, bytes to logits: {result['in_process'].get('single_image_ms', 0):.2f} ms")
    breakdown = latency_breakdown(result)
    if breakdown:
        lines += ["", "ONE IMAGE AT CONCURRENCY 1 (ms; served: gRPC p50)"]
        lines += [f"  {name:36s} {ms:6.2f}" for name, ms in breakdown.items()]
        stages = single_image_point(result).get("extra", {}).get("classifier_stages_ms")
        if stages:
            lines.append(
                "  classifier's own stages per execute: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            )
    lines += [
        "",
        "SERVED, one image per request (perf_analyzer)",
        f"{'endpoint':9s} {'proto':5s} {'conc':>5s} {'images/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'GPU %':>6s} "
        f"{'JPEG %':>6s} {'CPU ms':>6s}  per-model mean batch / compute ms",
    ]
    for p in result["endpoints"]:
        models = _per_model(p)
        lines.append(
            f"{p['extra']['endpoint']:9s} {p['protocol']:5s} {p['concurrency']:5d} {p['images_per_s']:9.0f} "
            f"{p['p50_ms']:7.1f} {p['p99_ms']:7.1f} {p['gpu_util_percent'] or 0:6.0f} "
            f"{p['extra'].get('jpeg_util_percent') or 0:6.1f} {p['extra'].get('server_cpu_ms_per_image') or 0:6.2f}  {models}"
        )
    if result.get("forms"):
        lines += [
            "",
            "SERVED, request forms (the project's client as load generator)",
            f"{'form':7s} {'proto':5s} {'images':14s} {'img/req':>7s} {'conc':>5s} {'images/s':>9s} "
            f"{'p50 ms':>7s} {'p99 ms':>7s} {'MB/req':>7s} {'JPEG %':>6s} {'CPU ms':>6s}  per-model mean batch / compute ms",
        ]
        for p in result["forms"]:
            models = _per_model(p)
            lines.append(
                f"{p['form']:7s} {p['protocol']:5s} {p['extra']['images']:14s} {p['images_per_request']:7d} "
                f"{p['concurrency']:5d} {p['images_per_s']:9.0f} {p['p50_ms']:7.1f} {p['p99_ms']:7.1f} "
                f"{p['request_bytes'] / 1e6:7.2f} {p['extra'].get('jpeg_util_percent') or 0:6.1f} "
                f"{p['extra'].get('server_cpu_ms_per_image') or 0:6.2f}  {models}"
            )
    lines += ["", "HOST CPU PER IMAGE BY ROLE (ms; over each point's whole run)"] + _cpu_lines(result)
    lines += ["", "SUMMARY"] + [f"  {k}: {v}" for k, v in result["summary"].items()]
    return "\n".join(lines)


def _per_model(point: Mapping[str, Any]) -> str:
    """A served point's per-model column: each model's mean batch / compute ms."""
    return "; ".join(
        f"{name} {m['mean_batch']:.1f}/{m['compute_ms']:.1f}" for name, m in point["extra"]["models"].items()
    )


def _cpu_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per served point: its CPU milliseconds per image, role by role."""
    lines = []
    for p in [*result["endpoints"], *result.get("forms", [])]:
        roles = p["extra"].get("cpu_ms_per_image")
        if not roles:
            continue
        what = (
            f"{p['extra']['endpoint']} c={p['concurrency']}"
            if "endpoint" in p["extra"]
            else f"{p['form']} {p['extra']['images']} {p['images_per_request']}x{p['concurrency']}"
        )
        lines.append(f"  {what:32s} " + ", ".join(f"{role} {ms:.2f}" for role, ms in roles.items()))
    return lines


def _sizes(result: Mapping[str, Any]) -> list[int]:
    sizes = set()
    for stage, rates in result["in_process"].items():
        if stage in IN_PROCESS_STAGES:
            sizes.update(int(b) for b in rates)
    return sorted(sizes)
