"""Server-side load with ``perf_analyzer`` and what the server says about it.

A Python load generator on the server's own host tops out before a GPU server does (the
prototype's clients used 44-76 % of the H100 host's cores), so the GPU benchmark drives the
endpoints with ``perf_analyzer`` (PyPI ``perf-analyzer``; needs glibc 2.38, so it runs on the
GPU machine but not on the 2-core development machine) and reads, next to its numbers,
Triton's per-model statistics and the GPU's utilization.

Example::

    data = write_input_data(images, tmp / "data.json")
    point = run_perf_analyzer("classifier", data, url="127.0.0.1:8001", protocol="grpc", concurrency=64)
    print(point.images_per_s, point.p99_ms)
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bls_pipeline import contract
from bls_pipeline.devtools.bench.images import BenchImage
from bls_pipeline.devtools.bench.report import perf_analyzer_data
from bls_pipeline.errors import BenchError, EndpointFailure
from bls_pipeline.serving.metrics import EXECUTE_IMAGES, FLUSH_INTERVAL_S, STAGE_DURATION, STAGES

# perf_analyzer's CSV columns (microseconds) that this module reports.
_LATENCY_COLUMNS = {"p50_ms": "p50 latency", "p90_ms": "p90 latency", "p99_ms": "p99 latency"}
_SERVER_COLUMNS = {"server_queue_ms": "Server Queue", "server_compute_ms": "Server Compute Infer"}
_PROMETHEUS_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_PROMETHEUS_LABEL = re.compile(r'(\w+)="([^"]*)"')
# perf_analyzer's --input-data value for random tensors of the model's own input shapes.
RANDOM_DATA = "random"


@dataclass
class PerfPoint:
    """One perf_analyzer measurement of one model at one concurrency."""

    model: str
    protocol: str
    concurrency: int
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_queue_ms: float
    server_compute_ms: float
    gpu_util_percent: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def perf_analyzer_binary() -> str:
    """The ``perf_analyzer`` executable, or a :class:`BenchError` that says how to get it."""
    found = shutil.which("perf_analyzer")
    if found:
        return found
    try:
        import perf_analyzer  # the PyPI wheel keeps the binary inside the package
    except ImportError as exc:
        raise BenchError("perf_analyzer not found: pip install perf-analyzer (needs glibc >= 2.38)") from exc
    binary = Path(perf_analyzer.__file__).parent / "bin" / "perf_analyzer"
    if not binary.is_file():
        raise BenchError(f"the perf-analyzer package has no binary at {binary}")
    return str(binary)


def write_input_data(
    images: Sequence[BenchImage], path: Path, input_name: str = contract.IMAGE_INPUT, *, unbatched: bool = False
) -> Path:
    """Write :func:`perf_analyzer_data` of ``images`` (as input ``input_name``, ``unbatched``) to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(perf_analyzer_data(images, input_name, unbatched=unbatched)))
    return path


def parse_perf_csv(text: str) -> dict[str, float]:
    """The last row of perf_analyzer's ``-f`` CSV: throughput and latencies (ms).

    >>> parse_perf_csv("Concurrency,Inferences/Second,p50 latency,p90 latency,p99 latency,Server Queue,Server Compute Infer\\n"
    ...                "8,1000.5,2000,3000,4000,100,1500\\n")["p99_ms"]
    4.0
    """
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise BenchError("perf_analyzer wrote no measurement")
    row = {key.strip(): value for key, value in rows[-1].items() if key}
    parsed = {"images_per_s": float(row["Inferences/Second"])}
    for key, column in {**_LATENCY_COLUMNS, **_SERVER_COLUMNS}.items():
        parsed[key] = float(row.get(column) or 0.0) / 1000.0
    return parsed


def run_perf_analyzer(
    model: str,
    input_data: Path | str,
    *,
    url: str,
    protocol: str,
    concurrency: int,
    measurement_ms: int = 4000,
    workdir: Path | None = None,
) -> PerfPoint:
    """Measure ``model`` at one concurrency with one image per request; raise on failure.

    ``input_data`` is a JSON file of :func:`write_input_data`, or ``RANDOM_DATA`` for
    perf_analyzer's own random tensors of the model's input shapes (then ``workdir`` says
    where its CSV goes).
    """
    if input_data == RANDOM_DATA and workdir is None:
        raise ValueError("run_perf_analyzer with random data needs a workdir for its CSV")
    workdir = Path(workdir or Path(input_data).parent)
    csv_path = workdir / f"perf-{model}-{protocol}-{concurrency}.csv"
    command = [
        perf_analyzer_binary(),
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "--input-data",
        str(input_data),
        "-b",
        "1",
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(measurement_ms),
        # A GPU server's throughput swings more than 20 % between 3 s windows at low load.
        "--stability-percentage",
        "35",
        "--max-trials",
        "5",
        "-f",
        str(csv_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not csv_path.is_file():
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-4:])
        raise EndpointFailure(f"perf_analyzer failed on {model} at concurrency {concurrency}: {tail}")
    return PerfPoint(model=model, protocol=protocol, concurrency=concurrency, **parse_perf_csv(csv_path.read_text()))


def model_statistics(http_url: str) -> dict[str, dict[str, float]]:
    """Per model: executions, inferences, requests, and the mean queue/compute time of a request (ms).

    From Triton's ``/v2/models/stats``. Its queue and compute times are summed over *requests*
    (each request of a batched execution adds that execution's compute time), so a mean per
    request is the time one batched execution took. The mean batch an execution saw is
    ``inferences / executions``: the number that says whether dynamic batching works.
    """
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=30) as response:
        stats = json.load(response)
    summary = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        summary[model["name"]] = {
            "executions": int(model.get("execution_count", 0)),
            "inferences": int(model.get("inference_count", 0)),
            "requests": int(inference.get("success", {}).get("count", 0)),
            "queue_ns": int(inference.get("queue", {}).get("ns", 0)),
            "compute_ns": int(inference.get("compute_infer", {}).get("ns", 0)),
        }
    return summary


Metrics = dict[tuple[str, frozenset], float]


def scrape_metrics(port: int, host: str = "127.0.0.1") -> Metrics:
    """The server's ``/metrics`` as :func:`parse_metrics` gives them."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode())


def parse_metrics(text: str) -> Metrics:
    """Prometheus text format as ``{(name, frozenset of (label, value)): value}``.

    >>> parse_metrics('# TYPE x counter\\nx{model="m",stage="a"} 2.5\\n')[("x", frozenset({("model", "m"), ("stage", "a")}))]
    2.5
    """
    metrics = {}
    for line in text.splitlines():
        match = _PROMETHEUS_SAMPLE.match(line)
        if match is None:  # comments (# HELP, # TYPE) and blank lines
            continue
        name, labels, value = match.groups()
        metrics[(name, frozenset(_PROMETHEUS_LABEL.findall(labels or "")))] = float(value)
    return metrics


def settled_metrics(port: int) -> Metrics:
    """:func:`scrape_metrics` once everything the classifier recorded so far has been sent
    (its metrics thread sends at most every ``FLUSH_INTERVAL_S``)."""
    time.sleep(1.5 * FLUSH_INTERVAL_S)
    return scrape_metrics(port)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (key, pairs), value in metrics.items() if key == name and wanted <= pairs)


def classifier_stages_ms(before: Metrics, after: Metrics, model: str) -> dict[str, float]:
    """The classifier ``model``'s own stages between two scrapes, in ms per ``execute``: where
    its time goes around the two BLS calls (``bls_classifier_stage_duration_us``,
    docs/metrics.md); empty when it executed nothing in between."""
    executes = metric(after, f"{EXECUTE_IMAGES}_count", model=model) - metric(
        before, f"{EXECUTE_IMAGES}_count", model=model
    )
    if executes <= 0:
        return {}
    return {
        stage: (
            metric(after, STAGE_DURATION, model=model, stage=stage)
            - metric(before, STAGE_DURATION, model=model, stage=stage)
        )
        / executes
        / 1e3
        for stage in STAGES
    }


def statistics_delta(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """What happened between two :func:`model_statistics` readings.

    Per model: executions, the mean batch of an execution, and the mean queue and compute
    time of a request in ms (the compute time of a request is that of its batched execution).
    """
    delta = {}
    for name, now in after.items():
        was = before.get(name, {})
        change = {key: now[key] - was.get(key, 0) for key in now}
        if change["executions"] <= 0 or change["requests"] <= 0:
            continue
        delta[name] = {
            "executions": change["executions"],
            "mean_batch": change["inferences"] / change["executions"],
            "queue_ms": change["queue_ns"] / change["requests"] / 1e6,
            "compute_ms": change["compute_ns"] / change["requests"] / 1e6,
        }
    return delta


class GpuSampler:
    """Samples the GPU's utilization (``nvidia-smi dmon``: SM and hardware JPEG engine) in a
    thread while in use.

    ``with GpuSampler() as sampler: ...`` then ``sampler.mean()`` and ``sampler.mean_jpeg()``;
    without nvidia-smi it records nothing and both are ``None``.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.jpeg_samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        query = ["nvidia-smi", "dmon", "-s", "u", "-c", "1", "-i", "0"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                sample = parse_dmon_utilization(out)
                self.samples.append(sample["sm"])
                if "jpg" in sample:
                    self.jpeg_samples.append(sample["jpg"])
            except (OSError, KeyError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.interval_s)

    def mean(self) -> float | None:
        """Mean SM utilization (%) over the samples, or ``None`` when there were none."""
        return sum(self.samples) / len(self.samples) if self.samples else None

    def mean_jpeg(self) -> float | None:
        """Mean utilization (%) of the hardware JPEG engines, or ``None`` when not reported."""
        return sum(self.jpeg_samples) / len(self.jpeg_samples) if self.jpeg_samples else None


def parse_dmon_utilization(output: str) -> dict[str, float]:
    """The last sample of ``nvidia-smi dmon -s u`` by column (``sm``, ``mem``, ``jpg``, ...);
    columns reported as ``-`` are left out."""
    header: list[str] = []
    sample: dict[str, float] = {}
    for line in output.splitlines():
        fields = line.split()
        if line.startswith("#") and "sm" in fields:
            header = fields[1:]
        elif header and fields and not line.startswith("#"):
            sample = {name: float(value) for name, value in zip(header, fields) if value.replace(".", "", 1).isdigit()}
    return sample


def gpu_process_memory() -> dict[str, float]:
    """GPU memory (MiB) of every process on the GPUs, by ``pid:name``, from nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return {}
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    memory = {}
    for line in out.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[2].replace(".", "", 1).isdigit():
            memory[f"{parts[0]}:{Path(parts[1]).name}"] = float(parts[2])
    return memory
