"""Soak the ``classifier`` endpoint: many requests, good and bad images, memory watched.

``tools/soak.py`` is the command line over this module. Every request carries either a good
image (a real photograph as JPEG or PNG), which must be classified, or one of the bad kinds of
:func:`build_samples`, which must be refused with ``INVALID_ARG`` (HTTP 400) and a message that
names the image and the reason. Anything else is an *unexpected* outcome. Between phases the
soak reads the server's memory: the resident set of ``tritonserver`` and its Python-backend
stubs (``VmRSS`` in ``/proc/<pid>/status``) and the stubs' ``/dev/shm`` segments.

Example::

    samples = build_samples()
    report = run_soak(SoakOptions(url="127.0.0.1:8000", requests=2000, concurrency=4), samples,
                      server_pid=server.process.pid)
    print(format_report(report))
    assert report.unexpected == 0
"""

from __future__ import annotations

import io
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bls_pipeline.client import MODEL_NAME, host_port, image_input, requested_outputs
from bls_pipeline.contract import PADDED_FORM, SCORES_OUTPUT
from bls_pipeline.devtools.stats import percentile
from bls_pipeline.server.processes import proc_status, stub_processes

# skimage photographs that EfficientNet-Lite0 classifies as one clear class.
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
OK = "ok"
EXPECTED = "expected error"
UNEXPECTED = "UNEXPECTED"
PHASES = ("start", "warm", "end")


@dataclass(frozen=True)
class Sample:
    """One kind of request: its images, ``top_k``, and the error it must get (``None``: none).

    ``expected`` is a fragment of the refusal message, checked after the image index.
    """

    kind: str
    images: tuple[bytes, ...]
    expected: str | None = None
    top_k: object = None

    @property
    def bad(self) -> bool:
        """Whether the request must be refused."""
        return self.expected is not None


def encode_image(image: Any, fmt: str, **options: object) -> bytes:
    """``image`` (a PIL image, or an array ``Image.fromarray`` takes) encoded by PIL as ``fmt``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def huge_jpeg_header(width: int = 65000, height: int = 65000) -> bytes:
    """A small, valid 8x8 JPEG whose frame header declares ``width`` x ``height`` pixels."""
    data = bytearray(encode_image(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def corrupt_png_data(png: bytes) -> bytes:
    """``png`` with the start of its first IDAT chunk overwritten: the header and every chunk
    are in place (it passes :func:`~bls_pipeline.image_header.check_image`), but the pixel
    data does not inflate, so DALI fails to decode it, alone or in any batch."""
    data = bytearray(png)
    idat = data.find(b"IDAT")
    data[idat + 4 : idat + 68] = bytes(range(64))
    return bytes(data)


def build_samples(seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """The good and the bad request kinds, from skimage's photographs.

    Bad kinds: an empty image, an all-zero row, random bytes, a JPEG cut in half, a PNG whose
    pixel data is corrupt (passes the header checks, fails in DALI), a header that declares
    65000x65000 pixels, a GIF, ``top_k`` 0, and two-image requests whose second image is bad.
    """
    import skimage.data

    photos = {name: getattr(skimage.data, name)() for name in PHOTOS}
    good = []
    for name, array in photos.items():
        good.append(Sample(f"{name}.jpg", (encode_image(array, "JPEG", quality=90),)))
        good.append(Sample(f"{name}.png", (encode_image(array, "PNG"),)))
    jpeg, png = good[0].images[0], good[1].images[0]
    cut = jpeg[: len(jpeg) // 2]
    corrupt = corrupt_png_data(png)
    rng = np.random.default_rng(seed)
    bad = [
        Sample("empty", (b"",), "image 0: empty image"),
        Sample("all-zero row", (bytes(4096),), "image 0: empty image"),
        Sample("random bytes", (b"\x17" + rng.integers(0, 256, 4095, dtype=np.uint8).tobytes(),), "image 0: not an image"),
        Sample("cut JPEG", (cut,), "image 0: truncated JPEG"),
        Sample("corrupt PNG data", (corrupt,), "image 0: cannot be decoded"),
        Sample("65000x65000 header", (huge_jpeg_header(),), "image 0: declares 65000x65000"),
        Sample("GIF", (encode_image(photos["chelsea"], "GIF"),), "image 0: GIF images are not accepted"),
        Sample("top_k 0", (jpeg,), "top_k must be an integer", top_k=0),
        Sample("cut JPEG second", (good[2].images[0], cut), "image 1: truncated JPEG"),
        Sample("corrupt PNG second", (good[2].images[0], corrupt), "image 1: cannot be decoded"),
    ]
    return good, bad


# --- memory -------------------------------------------------------------------------------------


def read_rss_kib(pid: int, proc: Path = Path("/proc")) -> int:
    """``VmRSS`` of ``pid`` in KiB, 0 when the process is gone (or a zombie without memory)."""
    rss = proc_status(pid, proc).get("VmRSS")
    return int(rss.split()[0]) if rss else 0


def segment_bytes(names: Sequence[str], shm_dir: Path = Path("/dev/shm")) -> int:
    """Bytes that the named ``/dev/shm`` files really occupy (they are sparse until written)."""
    total = 0
    for name in names:
        try:
            total += (shm_dir / name).stat().st_blocks * 512
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class MemorySnapshot:
    """The server's memory at one moment: resident KiB of the server and its stubs, /dev/shm bytes."""

    rss_kib: int
    shm_bytes: int
    processes: int
    # RSS KiB by process: "tritonserver" and each stub's model name
    by_process: dict[str, int] = field(default_factory=dict)

    @property
    def total_mib(self) -> float:
        """RSS plus shared memory, in MiB."""
        return (self.rss_kib * 1024 + self.shm_bytes) / 2**20


def server_memory(server_pid: int) -> MemorySnapshot:
    """RSS of ``tritonserver`` (``server_pid``) plus its stubs, and the stubs' segments."""
    stubs = stub_processes(server_pid)
    by_process = {"tritonserver": read_rss_kib(server_pid)}
    for stub in stubs:
        name = stub.model if stub.model not in by_process else f"{stub.model} (pid {stub.pid})"
        by_process[name] = read_rss_kib(stub.pid)
    shm = segment_bytes([stub.shm_region for stub in stubs])
    return MemorySnapshot(sum(by_process.values()), shm, 1 + len(stubs), by_process)


def growth_percent(before: float, after: float) -> float:
    """``after`` relative to ``before``, in percent (0 when there is no ``before``)."""
    return 0.0 if before <= 0 else (after - before) / before * 100.0


# --- outcomes -----------------------------------------------------------------------------------


def judge(sample: Sample, status: str | None, message: str | None) -> str:
    """:data:`OK`, :data:`EXPECTED` or :data:`UNEXPECTED` for one response.

    ``status`` is the HTTP status of a failed request (``None`` on success) and ``message``
    its error message.
    """
    if status is None:
        return UNEXPECTED if sample.bad else OK
    if sample.bad and status == "400" and message is not None and sample.expected in message:
        return EXPECTED
    return UNEXPECTED


@dataclass
class Tally:
    """Outcomes by request kind, latencies, and the first unexpected messages."""

    outcomes: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    unexpected_examples: list[str] = field(default_factory=list)
    max_examples: int = 20
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, sample: Sample, outcome: str, latency_s: float, message: str | None = None) -> None:
        """Count one response (thread-safe)."""
        with self._lock:
            self.outcomes[(sample.kind, outcome)] += 1
            self.latencies_s.append(latency_s)
            if outcome == UNEXPECTED and len(self.unexpected_examples) < self.max_examples:
                self.unexpected_examples.append(f"{sample.kind}: {message or 'succeeded but should have failed'}")

    def count(self, outcome: str) -> int:
        """Responses with ``outcome``."""
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)

    def by_kind(self, outcome: str) -> dict[str, int]:
        """Responses with ``outcome`` by request kind."""
        return dict(sorted((kind, n) for (kind, o), n in self.outcomes.items() if o == outcome))


# --- the run ------------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    """What to send: ``requests`` in all, ``concurrency`` in flight, ``bad_fraction`` of them bad."""

    url: str
    requests: int = 1000
    concurrency: int = 4
    bad_fraction: float = 0.2
    warmup: int | None = None
    seed: int = 0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ValueError(f"bad fraction must be in 0..1, got {self.bad_fraction}")
        if self.warmup is not None and not 0 <= self.warmup < self.requests:
            raise ValueError(f"warm-up must be in 0..{self.requests - 1} requests, got {self.warmup}")

    @property
    def warmup_requests(self) -> int:
        """Requests before the "warm" memory reading: 10% of them, at most 1000, unless given."""
        return self.warmup if self.warmup is not None else min(1000, self.requests // 10)


@dataclass
class SoakReport:
    """The outcome of a soak: counts, throughput, latency and memory by phase."""

    requests: int
    concurrency: int
    ok: int
    expected_errors: dict[str, int]
    unexpected: int
    unexpected_by_kind: dict[str, int]
    unexpected_examples: list[str]
    duration_s: float
    throughput_rps: float
    latency_p50_ms: float
    latency_p99_ms: float
    memory: dict[str, MemorySnapshot] = field(default_factory=dict)
    memory_trace: list[tuple[int, MemorySnapshot]] = field(default_factory=list)

    @property
    def rss_growth_percent(self) -> float | None:
        """Growth of server + stub RSS from warm-up to the end; ``None`` without readings."""
        if "warm" not in self.memory or "end" not in self.memory:
            return None
        return growth_percent(self.memory["warm"].rss_kib, self.memory["end"].rss_kib)

    @property
    def total_growth_percent(self) -> float | None:
        """Growth of RSS + /dev/shm from warm-up to the end; ``None`` without readings."""
        if "warm" not in self.memory or "end" not in self.memory:
            return None
        return growth_percent(self.memory["warm"].total_mib, self.memory["end"].total_mib)

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the growth figures."""
        data = asdict(self)
        data["memory_trace"] = [{"after_requests": n, **asdict(m)} for n, m in self.memory_trace]
        data["rss_growth_percent"] = self.rss_growth_percent
        data["total_growth_percent"] = self.total_growth_percent
        return data


def choose(samples_good: Sequence[Sample], samples_bad: Sequence[Sample], n: int, bad_fraction: float, seed: int) -> list[Sample]:
    """The ``n`` requests of a soak, in order: a seeded mix, bad ones cycling through every kind."""
    rng = random.Random(seed)
    plan = []
    for _ in range(n):
        if samples_bad and rng.random() < bad_fraction:
            plan.append(samples_bad[rng.randrange(len(samples_bad))])
        else:
            plan.append(samples_good[rng.randrange(len(samples_good))])
    return plan


def _send(client, httpclient, sample: Sample) -> tuple[str | None, str | None]:
    """Send one request; (``None``, ``None``) on success, else (HTTP status, message)."""
    from tritonclient.utils import InferenceServerException

    inputs = [image_input(httpclient, sample.images, PADDED_FORM)]
    parameters = None if sample.top_k is None else {"top_k": sample.top_k}
    try:
        result = client.infer(MODEL_NAME, inputs, outputs=requested_outputs(httpclient), parameters=parameters)
    except InferenceServerException as exc:
        return str(exc.status()), exc.message()
    except Exception as exc:  # noqa: BLE001 - connection errors of gevent/socket have no common base
        return "connection", f"{type(exc).__name__}: {exc}"
    scores = result.as_numpy(SCORES_OUTPUT)
    if scores.shape[0] != len(sample.images):
        return "bad response", f"{SCORES_OUTPUT} for {scores.shape[0]} images, sent {len(sample.images)}"
    return None, None


def run_soak(
    options: SoakOptions,
    samples: tuple[Sequence[Sample], Sequence[Sample]],
    *,
    server_pid: int | None = None,
    progress: Callable[[str], None] | None = None,
    snapshots: int = 20,
) -> SoakReport:
    """Send the soak's requests from ``options.concurrency`` threads and tally the outcomes.

    The warm-up requests run first, to completion; then the rest. With ``server_pid``, memory
    is read before the first request ("start"), after the warm-up ("warm"), about
    ``snapshots`` times in between and at the end ("end").
    """
    import tritonclient.http as httpclient

    good, bad = samples
    plan = choose(good, bad, options.requests, options.bad_fraction, options.seed)
    url = host_port(options.url)
    tally = Tally()
    memory: dict[str, MemorySnapshot] = {}
    trace: list[tuple[int, MemorySnapshot]] = []
    read_memory = (lambda: server_memory(server_pid)) if server_pid is not None else None
    trace_every = max(1, options.requests // max(1, snapshots))
    progress_every = max(1, options.requests // 10)
    lock = threading.Lock()
    state = {"next": 0, "done": 0}

    def worker(stop_at: int) -> None:
        client = httpclient.InferenceServerClient(url, connection_timeout=options.timeout_s, network_timeout=options.timeout_s)
        try:
            while True:
                with lock:
                    if state["next"] >= stop_at:
                        return
                    sample = plan[state["next"]]
                    state["next"] += 1
                started = time.perf_counter()
                status, message = _send(client, httpclient, sample)
                tally.record(sample, judge(sample, status, message), time.perf_counter() - started, message)
                with lock:
                    state["done"] += 1
                    done = state["done"]
                if read_memory is not None and done % trace_every == 0:
                    snapshot = read_memory()
                    with lock:
                        trace.append((done, snapshot))
                if progress is not None and done % progress_every == 0:
                    progress(f"{done}/{options.requests} requests, {tally.count(UNEXPECTED)} unexpected")
        finally:
            client.close()

    def drive(stop_at: int) -> None:
        threads = [
            threading.Thread(target=worker, args=(stop_at,), name=f"soak-{i}", daemon=True)
            for i in range(options.concurrency)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    if read_memory is not None:
        memory["start"] = read_memory()
    started = time.perf_counter()
    drive(options.warmup_requests)
    if read_memory is not None:
        memory["warm"] = read_memory()
    drive(len(plan))
    duration = time.perf_counter() - started
    if read_memory is not None:
        memory["end"] = read_memory()
    trace.sort(key=lambda item: item[0])
    return SoakReport(
        requests=options.requests,
        concurrency=options.concurrency,
        ok=tally.count(OK),
        expected_errors=tally.by_kind(EXPECTED),
        unexpected=tally.count(UNEXPECTED),
        unexpected_by_kind=tally.by_kind(UNEXPECTED),
        unexpected_examples=tally.unexpected_examples,
        duration_s=duration,
        throughput_rps=options.requests / duration if duration > 0 else 0.0,
        latency_p50_ms=percentile(tally.latencies_s, 50) * 1e3 if tally.latencies_s else 0.0,
        latency_p99_ms=percentile(tally.latencies_s, 99) * 1e3 if tally.latencies_s else 0.0,
        memory=memory,
        memory_trace=trace,
    )


def format_report(report: SoakReport) -> str:
    """The report as an aligned text table."""
    rows: list[tuple[str, str]] = [
        ("requests", f"{report.requests} (concurrency {report.concurrency})"),
        ("ok", str(report.ok)),
    ]
    for kind, n in report.expected_errors.items():
        rows.append((f"  INVALID_ARG: {kind}", str(n)))
    rows.append(("expected errors", str(sum(report.expected_errors.values()))))
    rows.append(("UNEXPECTED", str(report.unexpected)))
    for kind, n in report.unexpected_by_kind.items():
        rows.append((f"  unexpected: {kind}", str(n)))
    rows += [
        ("duration", f"{report.duration_s:.1f} s"),
        ("throughput", f"{report.throughput_rps:.1f} requests/s"),
        ("latency p50 / p99", f"{report.latency_p50_ms:.1f} / {report.latency_p99_ms:.1f} ms"),
    ]
    for phase in PHASES:
        if phase in report.memory:
            m = report.memory[phase]
            rows.append(
                (f"memory at {phase}", f"RSS {m.rss_kib / 1024:.1f} MiB ({m.processes} processes), /dev/shm {m.shm_bytes / 2**20:.1f} MiB")
            )
    if "warm" in report.memory and "end" in report.memory:
        warm, end = report.memory["warm"].by_process, report.memory["end"].by_process
        for name in warm:
            if name in end:
                rows.append(
                    (f"  RSS {name}", f"{warm[name] / 1024:.1f} -> {end[name] / 1024:.1f} MiB ({growth_percent(warm[name], end[name]):+.1f} %)")
                )
    if report.rss_growth_percent is not None:
        rows.append(("RSS growth after warm-up", f"{report.rss_growth_percent:+.2f} %"))
        rows.append(("RSS + shm growth after warm-up", f"{report.total_growth_percent:+.2f} %"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if report.unexpected_examples:
        lines.append("first unexpected outcomes:")
        lines += [f"  {example}" for example in report.unexpected_examples]
    return "\n".join(lines)
