"""Soak the ``classifier`` endpoint: many requests, good and bad images, memory watched.

``tools/soak.py`` is the command line over this module. Requests go through the project's
client (:class:`~bls_pipeline.client.ClassifierClient`, its default protocol and form unless
told otherwise), ``concurrency`` in flight in the closed loop of :mod:`bls_pipeline.devtools.load`,
and a request the server sheds is retried as users' clients do (:data:`SOAK_RETRY`); the report
counts those that were (``retried``). Every request carries either good images (real photographs as JPEG or PNG),
which must be classified, or one of the bad kinds of :func:`build_samples`, which must be
refused with ``INVALID_ARG`` and a message that names the image and the reason. Anything else
is an *unexpected* outcome. The soak runs for a number of requests or a duration and reads
the server's memory at its start, after the warm-up, over the run and at the end: the
resident set of ``tritonserver`` and its Python-backend stubs less their shared-memory pages
(``VmRSS`` - ``RssShmem`` in ``/proc/<pid>/status``), the stubs' ``/dev/shm`` segments (so
each shared page counts once), and on a GPU machine the GPU memory of each of those processes
(``nvidia-smi --query-compute-apps``).

The warm-up starts with a peak (:attr:`SoakOptions.peak_requests`): requests of the
endpoint's max batch size (read from the server), every image the largest good photograph,
with more requests in flight than the classifier has instances. A Python-backend region grows
to hold its largest execution once and never shrinks, as DALI's and the allocators' pools keep
their high-water mark: the peak lets each reach it before the "warm" reading, so that growth
after it is growth, not a first large batch. Each peak request is a full execution by itself:
requests of the soak's own size reach the max batch only where the dynamic batcher merges
them, which it does for some instances and not others (on an H200, 2 of 8 classifier regions
grew in a peak of 64-image requests, a third 10 minutes later; with 128-image requests all 8
grew in the peak and none after).

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
import shutil
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bls_pipeline.client import DEFAULT_FORM, RetryPolicy, ServerBusy
from bls_pipeline.contract import PADDED_FORM
from bls_pipeline.devtools.load import Answer, Target, clock, cyclic_groups, drive
from bls_pipeline.devtools.stats import percentile
from bls_pipeline.server.processes import proc_status, stub_processes

# skimage photographs that EfficientNet-Lite0 classifies as one clear class.
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
OK = "ok"
EXPECTED = "expected error"
UNEXPECTED = "UNEXPECTED"
PHASES = ("start", "warm", "end")
# The soak's client retries shed requests as users' clients do (the client's default deadline):
# only a request shed past it is an outcome of its own, an unexpected one.
SOAK_RETRY = RetryPolicy()
# The peak keeps this many times the soak's concurrency in flight: the soak's own concurrency
# is about one request per classifier instance, and merged executions need a queue.
PEAK_IN_FLIGHT_FACTOR = 4
# The bad kind whose image passes the header checks and fails in DALI.
CORRUPT_PNG_KIND = "corrupt PNG data"
# Readings whose median stands for the memory right after the warm-up and at the end.
GROWTH_WINDOW = 5


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


def build_samples(seed: int = 0, form: str = DEFAULT_FORM) -> tuple[list[Sample], list[Sample]]:
    """The good and the bad request kinds, from skimage's photographs, as they are refused in ``form``.

    Bad kinds: an empty image, an all-zero row, random bytes, a JPEG cut in half, a PNG whose
    pixel data is corrupt (passes the header checks, fails in DALI), a header that declares
    65000x65000 pixels, a GIF, ``top_k`` 0, and two-image requests whose second image is bad.
    An all-zero row is padding only, an empty image, in the padded form; sent as a file
    (the bytes form) it is 4096 bytes of no known format.
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
        Sample(
            "all-zero row", (bytes(4096),), "image 0: empty image" if form == PADDED_FORM else "image 0: not an image"
        ),
        Sample(
            "random bytes", (b"\x17" + rng.integers(0, 256, 4095, dtype=np.uint8).tobytes(),), "image 0: not an image"
        ),
        Sample("cut JPEG", (cut,), "image 0: truncated JPEG"),
        Sample(CORRUPT_PNG_KIND, (corrupt,), "image 0: cannot be decoded"),
        Sample("65000x65000 header", (huge_jpeg_header(),), "image 0: declares 65000x65000"),
        Sample("GIF", (encode_image(photos["chelsea"], "GIF"),), "image 0: GIF images are not accepted"),
        Sample("top_k 0", (jpeg,), "top_k must be an integer", top_k=0),
        Sample("cut JPEG second", (good[2].images[0], cut), "image 1: truncated JPEG"),
        Sample("corrupt PNG second", (good[2].images[0], corrupt), "image 1: cannot be decoded"),
    ]
    return good, bad


# --- memory -------------------------------------------------------------------------------------


def read_rss_kib(pid: int, proc: Path = Path("/proc")) -> int:
    """Resident KiB of ``pid`` less its shared-memory pages (``VmRSS`` - ``RssShmem``), 0 when
    the process is gone (or a zombie without memory).

    ``tritonserver`` maps every stub's ``/dev/shm`` region and each stub its own, so ``VmRSS``
    counts a region's pages again in each process that touched them (``tritonserver``'s rose
    by up to the regions' size as it wrote further into them). The soak counts those pages once,
    as ``/dev/shm``.
    """
    status = proc_status(pid, proc)
    rss, shared = status.get("VmRSS"), status.get("RssShmem")
    if not rss:
        return 0
    return int(rss.split()[0]) - (int(shared.split()[0]) if shared else 0)


def segment_bytes(names: Sequence[str], shm_dir: Path = Path("/dev/shm")) -> int:
    """Bytes that the named ``/dev/shm`` files really occupy (they are sparse until written)."""
    total = 0
    for name in names:
        try:
            total += (shm_dir / name).stat().st_blocks * 512
        except OSError:
            continue
    return total


def parse_compute_apps(text: str) -> dict[int, int]:
    """``{pid: MiB}`` from ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``
    (a process on several GPUs: summed)."""
    used: dict[int, int] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            used[int(fields[0])] = used.get(int(fields[0]), 0) + int(fields[1])
    return used


def gpu_memory_by_pid() -> dict[int, int] | None:
    """GPU memory (MiB) of every process using a GPU, from ``nvidia-smi``; ``None`` without one."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return None
    result = subprocess.run(
        [nvidia_smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return parse_compute_apps(result.stdout) if result.returncode == 0 else None


@dataclass(frozen=True)
class MemorySnapshot:
    """The server's memory at one moment: resident KiB of the server and its stubs, /dev/shm
    bytes, and (on a GPU machine) the GPU memory of each of those processes."""

    rss_kib: int
    shm_bytes: int
    processes: int
    # RSS KiB by process: "tritonserver" and each stub's model name
    by_process: dict[str, int] = field(default_factory=dict)
    # GPU MiB by process, the same names; None where nvidia-smi is not there
    gpu_mib: dict[str, int] | None = None
    # /dev/shm bytes of each stub's region, the same names: a Python-backend region grows in
    # steps of shm-growth-byte-size and never shrinks, so a step says which stub needed more
    shm_by_process: dict[str, int] = field(default_factory=dict)

    @property
    def total_mib(self) -> float:
        """RSS plus shared memory, in MiB."""
        return (self.rss_kib * 1024 + self.shm_bytes) / 2**20

    @property
    def gpu_total_mib(self) -> int | None:
        """GPU memory of the server and its stubs together, MiB (``None`` without a GPU reading)."""
        return None if self.gpu_mib is None else sum(self.gpu_mib.values())


def server_memory(server_pid: int, gpu: bool = True) -> MemorySnapshot:
    """RSS of ``tritonserver`` (``server_pid``) plus its stubs, their segments and, with ``gpu``,
    their GPU memory."""
    stubs = stub_processes(server_pid)
    names = {server_pid: "tritonserver"}
    for stub in stubs:
        names[stub.pid] = stub.model if stub.model not in names.values() else f"{stub.model} (pid {stub.pid})"
    by_process = {name: read_rss_kib(pid) for pid, name in names.items()}
    shm_by_process = {names[stub.pid]: segment_bytes([stub.shm_region]) for stub in stubs}
    used = gpu_memory_by_pid() if gpu else None
    gpu_mib = None if used is None else {name: used.get(pid, 0) for pid, name in names.items()}
    return MemorySnapshot(
        sum(by_process.values()), sum(shm_by_process.values()), 1 + len(stubs), by_process, gpu_mib, shm_by_process
    )


def growth_percent(before: float, after: float) -> float:
    """``after`` relative to ``before``, in percent (0 when there is no ``before``)."""
    return 0.0 if before <= 0 else (after - before) / before * 100.0


# --- outcomes -----------------------------------------------------------------------------------

# The status of a refused bad image: HTTP's and gRPC's INVALID_ARG.
INVALID_ARG_STATUSES = ("400", "StatusCode.INVALID_ARGUMENT")


def judge(sample: Sample, status: str | None, message: str | None) -> str:
    """:data:`OK`, :data:`EXPECTED` or :data:`UNEXPECTED` for one response.

    ``status`` is the status of a failed request (``None`` on success: HTTP's ``"400"``,
    gRPC's ``"StatusCode.INVALID_ARGUMENT"``, ...) and ``message`` its error message.
    """
    if status is None:
        return UNEXPECTED if sample.bad else OK
    if sample.bad and status in INVALID_ARG_STATUSES and message is not None and sample.expected in message:
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
    """What to send: ``requests`` in all, or for ``duration_s`` seconds; ``concurrency`` in
    flight, ``bad_fraction`` of them bad, good ones carrying ``images_per_request`` photographs;
    through :class:`~bls_pipeline.client.ClassifierClient` (``protocol``, ``form``: its defaults)."""

    url: str
    requests: int = 1000
    concurrency: int = 4
    bad_fraction: float = 0.2
    warmup: int | None = None
    seed: int = 0
    timeout_s: float = 120.0
    duration_s: float | None = None
    warmup_s: float | None = None
    images_per_request: int = 1
    protocol: str | None = None
    form: str = DEFAULT_FORM
    sample_interval_s: float = 10.0
    # The warm-up's peak (see the module docstring): requests of the max batch size, all the
    # largest good photograph, PEAK_IN_FLIGHT_FACTOR times ``concurrency`` in flight; None: two
    # rounds of that, 0: none.
    peak_requests: int | None = None

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ValueError(f"bad fraction must be in 0..1, got {self.bad_fraction}")
        if self.warmup is not None and not 0 <= self.warmup < self.requests:
            raise ValueError(f"warm-up must be in 0..{self.requests - 1} requests, got {self.warmup}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration must be positive, got {self.duration_s}")
        if self.warmup_s is not None and (self.duration_s is None or not 0 <= self.warmup_s < self.duration_s):
            raise ValueError("a warm-up in seconds goes with a longer --duration")
        if self.images_per_request < 1 or self.sample_interval_s <= 0:
            raise ValueError("images per request must be at least 1 and the sample interval positive")
        if self.peak_requests is not None and self.peak_requests < 0:
            raise ValueError(f"peak requests must be 0 or more, got {self.peak_requests}")

    @property
    def peak_concurrency(self) -> int:
        """Requests in flight during the peak: more than the classifier's instances take at once."""
        return PEAK_IN_FLIGHT_FACTOR * self.concurrency

    @property
    def peak_total(self) -> int:
        """Requests of the peak: ``peak_requests``, or two rounds of :attr:`peak_concurrency`."""
        return 2 * self.peak_concurrency if self.peak_requests is None else self.peak_requests

    @property
    def warmup_requests(self) -> int:
        """Requests before the "warm" memory reading: 10% of them, at most 1000, unless given."""
        return self.warmup if self.warmup is not None else min(1000, self.requests // 10)

    @property
    def warmup_seconds(self) -> float:
        """With ``duration_s``: seconds before the "warm" reading, 10% of it (at most 60 s) unless given."""
        assert self.duration_s is not None
        return self.warmup_s if self.warmup_s is not None else default_warmup_seconds(self.duration_s)


@dataclass
class SoakReport:
    """The outcome of a soak: counts, throughput, latency and memory by phase and over time."""

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
    # (seconds since the start, requests answered, snapshot), every sample interval
    memory_trace: list[tuple[float, int, MemorySnapshot]] = field(default_factory=list)
    images_per_s: float = 0.0
    # Requests the server shed at least once, then answered when the client sent them again.
    retried: int = 0
    # Requests of the warm-up's peak, included in ``requests`` and the outcomes, and the
    # images each carried (the endpoint's max batch size).
    peak_requests: int = 0
    peak_images: int = 0
    # Seconds from the start to the "warm" reading (None: not recorded).
    warm_at_s: float | None = None
    # How the expected errors came back: the served soak's are refusals with INVALID_ARG.
    expected_as: str = "INVALID_ARG"

    def _growth(self, value: Callable[[MemorySnapshot], float | None]) -> float | None:
        """Growth after the warm-up: the median of the last readings against the median of the
        first ones after the warm-up, where the trace holds enough of them (two single readings
        of a server whose memory swings by 10-20 % under load say little); else the "warm" and
        "end" readings."""
        window = self._after_warm_up()
        if len(window) >= 2 * GROWTH_WINDOW:
            first = [value(m) for m in window[:GROWTH_WINDOW]]
            last = [value(m) for m in window[-GROWTH_WINDOW:]]
            if None not in first and None not in last:
                return growth_percent(float(np.median(first)), float(np.median(last)))  # type: ignore[arg-type]
        if "warm" not in self.memory or "end" not in self.memory:
            return None
        warm, end = value(self.memory["warm"]), value(self.memory["end"])
        return None if warm is None or end is None else growth_percent(warm, end)

    @property
    def growth_basis(self) -> str:
        """What the growth figures compare."""
        if len(self._after_warm_up()) >= 2 * GROWTH_WINDOW:
            return f"median of the last {GROWTH_WINDOW} readings against the first {GROWTH_WINDOW} after the warm-up"
        return "the end reading against the warm-up reading"

    def _after_warm_up(self) -> list[MemorySnapshot]:
        if self.warm_at_s is None:
            return []
        return [snapshot for elapsed, _, snapshot in self.memory_trace if elapsed >= self.warm_at_s]

    @property
    def rss_growth_percent(self) -> float | None:
        """Growth of server + stub RSS from warm-up to the end; ``None`` without readings."""
        return self._growth(lambda m: m.rss_kib)

    @property
    def shm_growth_percent(self) -> float | None:
        """Growth of the stubs' /dev/shm from warm-up to the end."""
        return self._growth(lambda m: m.shm_bytes)

    @property
    def gpu_growth_percent(self) -> float | None:
        """Growth of the server's and stubs' GPU memory from warm-up to the end (``None`` without a GPU)."""
        return self._growth(lambda m: m.gpu_total_mib)

    @property
    def total_growth_percent(self) -> float | None:
        """Growth of RSS + /dev/shm from warm-up to the end; ``None`` without readings."""
        return self._growth(lambda m: m.total_mib)

    def growth_verdicts(self, max_growth: float) -> dict[str, tuple[float, bool]]:
        """``{"RSS": (percent, within), "/dev/shm": ..., "GPU memory": ...}`` for the readings there are."""
        figures = {
            "RSS": self.rss_growth_percent,
            "/dev/shm": self.shm_growth_percent,
            "GPU memory": self.gpu_growth_percent,
        }
        return {name: (value, value < max_growth) for name, value in figures.items() if value is not None}

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the growth figures."""
        data = asdict(self)
        data["memory_trace"] = [{"elapsed_s": t, "after_requests": n, **asdict(m)} for t, n, m in self.memory_trace]
        data["rss_growth_percent"] = self.rss_growth_percent
        data["shm_growth_percent"] = self.shm_growth_percent
        data["gpu_growth_percent"] = self.gpu_growth_percent
        data["total_growth_percent"] = self.total_growth_percent
        data["growth_basis"] = self.growth_basis
        return data


def choose(
    samples_good: Sequence[Sample], samples_bad: Sequence[Sample], n: int, bad_fraction: float, seed: int
) -> list[Sample]:
    """The ``n`` requests of a soak, in order: a seeded mix, bad ones cycling through every kind."""
    rng = random.Random(seed)
    return [_draw(rng, samples_good, samples_bad, bad_fraction) for _ in range(n)]


def _draw(rng: random.Random, good: Sequence[Sample], bad: Sequence[Sample], bad_fraction: float) -> Sample:
    if bad and rng.random() < bad_fraction:
        return bad[rng.randrange(len(bad))]
    return good[rng.randrange(len(good))]


def default_warmup_seconds(duration_s: float) -> float:
    """Seconds before a timed soak's "warm" reading when none is given: 10 % of it, at most 60 s."""
    return min(60.0, duration_s / 10)


def peak_sample(good: Sequence[Sample], max_batch_size: int) -> Sample:
    """A good request of ``max_batch_size`` copies of the largest good photograph: the largest
    execution the soak's load can make, in one request (the batcher merges no more into it)."""
    largest = max((image for sample in good for image in sample.images), key=len)
    return Sample(f"peak: {max_batch_size} x {len(largest) // 1024} KB", (largest,) * max_batch_size)


def photo_batches(good: Sequence[Sample], images_per_request: int) -> list[Sample]:
    """Good requests of ``images_per_request`` photographs each (one per starting photograph, cyclic)."""
    if images_per_request == 1:
        return list(good)
    images = [image for sample in good for image in sample.images]
    return [Sample(f"{images_per_request} photographs", group) for group in cyclic_groups(images, images_per_request)]


def _status(sample: Sample, answer: Answer) -> tuple[str | None, str | None]:
    """(``None``, ``None``) for a request answered with a prediction per image, else (status, message)."""
    if isinstance(answer.error, ServerBusy):
        return "shed", str(answer.error)
    if answer.error is not None:
        return answer.error.status or "no status", str(answer.error)
    assert answer.predictions is not None
    if len(answer.predictions) != len(sample.images):
        return "bad response", f"predictions for {len(answer.predictions)} images, sent {len(sample.images)}"
    return None, None


def run_soak(
    options: SoakOptions,
    samples: tuple[Sequence[Sample], Sequence[Sample]],
    *,
    server_pid: int | None = None,
    progress: Callable[[str], None] | None = None,
    snapshots: int = 20,
) -> SoakReport:
    """Keep ``options.concurrency`` of the soak's requests in flight and tally the outcomes.

    One client (the project's default one unless ``options`` says otherwise, retrying shed
    requests as users' clients do: :data:`SOAK_RETRY`) drives the closed loop of
    :func:`~bls_pipeline.devtools.load.drive`. With ``server_pid``, memory is
    read before the first request ("start"), when the warm-up ends ("warm": after
    ``warmup_requests``, or ``warmup_seconds`` with a duration), over the run (about
    ``snapshots`` times, or every ``sample_interval_s`` with a duration) and at the end.
    """
    photos, bad = samples
    good = photo_batches(photos, options.images_per_request)
    rng = random.Random(options.seed)
    timed = options.duration_s is not None
    tally = Tally()
    memory: dict[str, MemorySnapshot] = {}
    trace: list[tuple[float, int, MemorySnapshot]] = []
    read_memory = (lambda: server_memory(server_pid)) if server_pid is not None else None
    trace_every = max(1, options.requests // max(1, snapshots))
    lock = threading.Lock()
    state = {"sent": 0, "done": 0, "images": 0, "retried": 0}
    finished = threading.Event()

    def warm_reached(elapsed: float, done: int) -> bool:
        return elapsed >= options.warmup_seconds if timed else done >= options.peak_total + options.warmup_requests

    warm_at: list[float] = []

    def take(name: str) -> None:
        if read_memory is not None:
            snapshot = read_memory()
            with lock:
                if name not in memory and name == "warm":
                    warm_at.append(clock() - started)
                memory.setdefault(name, snapshot)

    def next_sample() -> Sample | None:
        # The driver calls it under its own lock, one worker at a time.
        elapsed = clock() - started
        if (timed and elapsed >= options.duration_s) or (not timed and state["sent"] >= options.requests):
            return None
        state["sent"] += 1
        return _draw(rng, good, bad, options.bad_fraction)

    def on_answer(sample: Sample, answer: Answer) -> None:
        status, message = _status(sample, answer)
        tally.record(sample, judge(sample, status, message), answer.latency_s, message)
        with lock:
            state["done"] += 1
            state["images"] += len(sample.images) if status is None else 0
            state["retried"] += answer.attempts > 1
            done = state["done"]
        if "warm" not in memory and warm_reached(clock() - started, done):
            take("warm")
        if read_memory is not None and not timed and done % trace_every == 0:
            snapshot = read_memory()
            with lock:
                trace.append((clock() - started, done, snapshot))

    def sampler() -> None:
        # With a duration: memory (and progress) every sample interval, whatever the request rate.
        while not finished.wait(options.sample_interval_s):
            elapsed, done = clock() - started, state["done"]
            if read_memory is not None:
                snapshot = read_memory()
                with lock:
                    trace.append((elapsed, done, snapshot))
            if progress is not None:
                progress(
                    f"{elapsed:.0f}/{options.duration_s:.0f} s, {done} requests, {tally.count(UNEXPECTED)} unexpected"
                )

    def reporter() -> None:
        every = max(1, options.requests // 10)
        reported = 0
        while not finished.wait(0.5):
            if state["done"] // every > reported:
                reported = state["done"] // every
                progress(f"{state['done']}/{options.requests} requests, {tally.count(UNEXPECTED)} unexpected")  # type: ignore[misc]

    target = Target(
        options.url, retry=SOAK_RETRY, protocol=options.protocol, form=options.form, timeout_s=options.timeout_s
    )
    take("start")
    watchers = []
    if timed:
        watchers.append(threading.Thread(target=sampler, name="soak-memory", daemon=True))
    elif progress is not None:
        watchers.append(threading.Thread(target=reporter, name="soak-progress", daemon=True))
    peak_left = [options.peak_total]

    def next_peak() -> Sample | None:
        if peak_left[0] == 0:
            return None
        peak_left[0] -= 1
        return peak

    with target.client(options.concurrency) as client:
        peak = peak_sample(photos, client.max_batch_size()) if options.peak_total else None
        started = clock()
        for thread in watchers:
            thread.start()
        try:
            if peak is not None:
                if progress is not None:
                    progress(
                        f"warm-up peak: {options.peak_total} requests of {peak.kind}, {options.peak_concurrency} in flight"
                    )
                with target.client(options.peak_concurrency) as peak_client:
                    drive(peak_client, next_peak, on_answer, concurrency=options.peak_concurrency)
            drive(client, next_sample, on_answer, concurrency=options.concurrency)
        finally:
            duration = clock() - started
            finished.set()
            for thread in watchers:
                thread.join()
    take("end")
    trace.sort(key=lambda item: item[0])
    answered = state["done"]
    return SoakReport(
        requests=answered,
        concurrency=options.concurrency,
        ok=tally.count(OK),
        expected_errors=tally.by_kind(EXPECTED),
        unexpected=tally.count(UNEXPECTED),
        unexpected_by_kind=tally.by_kind(UNEXPECTED),
        unexpected_examples=tally.unexpected_examples,
        duration_s=duration,
        throughput_rps=answered / duration if duration > 0 else 0.0,
        latency_p50_ms=percentile(tally.latencies_s, 50) * 1e3 if tally.latencies_s else 0.0,
        latency_p99_ms=percentile(tally.latencies_s, 99) * 1e3 if tally.latencies_s else 0.0,
        memory=memory,
        memory_trace=trace,
        images_per_s=state["images"] / duration if duration > 0 else 0.0,
        retried=state["retried"],
        peak_requests=options.peak_total,
        peak_images=len(peak.images) if peak is not None else 0,
        warm_at_s=warm_at[0] if warm_at else None,
    )


def format_report(report: SoakReport, max_growth: float | None = None) -> str:
    """The report as an aligned text table (with the growth verdicts against ``max_growth``)."""
    rows: list[tuple[str, str]] = [
        ("requests", f"{report.requests} (concurrency {report.concurrency})"),
        ("ok", str(report.ok)),
    ]
    for kind, n in report.expected_errors.items():
        rows.append((f"  {report.expected_as}: {kind}", str(n)))
    rows.append(("expected errors", str(sum(report.expected_errors.values()))))
    rows.append(("UNEXPECTED", str(report.unexpected)))
    for kind, n in report.unexpected_by_kind.items():
        rows.append((f"  unexpected: {kind}", str(n)))
    rows.append(("shed, then sent again", str(report.retried)))
    rows += [
        ("duration", f"{report.duration_s:.1f} s"),
        ("throughput", f"{report.throughput_rps:.1f} requests/s, {report.images_per_s:.1f} images/s classified"),
        ("latency p50 / p99", f"{report.latency_p50_ms:.1f} / {report.latency_p99_ms:.1f} ms"),
    ]
    for phase in PHASES:
        if phase in report.memory:
            m = report.memory[phase]
            gpu = "" if m.gpu_total_mib is None else f", GPU {m.gpu_total_mib} MiB"
            rows.append(
                (
                    f"memory at {phase}",
                    f"RSS {m.rss_kib / 1024:.1f} MiB ({m.processes} processes), /dev/shm {m.shm_bytes / 2**20:.1f} MiB{gpu}",
                )
            )
    if "warm" in report.memory and "end" in report.memory:
        warm, end = report.memory["warm"], report.memory["end"]
        for name in warm.by_process:
            if name in end.by_process:
                before, after = warm.by_process[name], end.by_process[name]
                rows.append(
                    (
                        f"  RSS {name}",
                        f"{before / 1024:.1f} -> {after / 1024:.1f} MiB ({growth_percent(before, after):+.1f} %)",
                    )
                )
        for name in warm.gpu_mib or {}:
            if end.gpu_mib and name in end.gpu_mib:
                before, after = warm.gpu_mib[name], end.gpu_mib[name]
                rows.append((f"  GPU {name}", f"{before} -> {after} MiB ({growth_percent(before, after):+.1f} %)"))
        for name, before in warm.shm_by_process.items():
            after = end.shm_by_process.get(name, before)
            if after != before:
                rows.append((f"  shm {name}", f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB"))
    if report.rss_growth_percent is not None:
        rows.append(("growth", report.growth_basis))
        rows.append(("RSS growth after warm-up", f"{report.rss_growth_percent:+.2f} %"))
        rows.append(("RSS + shm growth after warm-up", f"{report.total_growth_percent:+.2f} %"))
    if max_growth is not None:
        for name, (value, within) in report.growth_verdicts(max_growth).items():
            rows.append(
                (
                    f"verdict: {name}",
                    f"{value:+.2f} % after warm-up: {'ok' if within else 'FAILED'} (limit {max_growth:g} %)",
                )
            )
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if report.unexpected_examples:
        lines.append("first unexpected outcomes:")
        lines += [f"  {example}" for example in report.unexpected_examples]
    return "\n".join(lines)
