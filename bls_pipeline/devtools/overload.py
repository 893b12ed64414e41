"""Drive the ``classifier`` endpoint open-loop, faster than it can answer, and account for every request.

A closed-loop client waits for each answer before it sends again, so it slows down with the
server and never overloads it (:func:`closed_loop` measures the capacity that way, with the
driver of :mod:`bls_pipeline.devtools.load`). Real traffic does not wait: :func:`open_loop`
sends requests at a fixed rate whatever happens to them, through the project's client with
retries off, and records for each one how it ended: classified, shed by the server
(``UNAVAILABLE``: its queue was full, or the request waited past the queue timeout), failed
otherwise, or not answered by the end. Latency is measured from the moment a request was
due, so a send that falls behind its schedule counts against the server, not for it.

Example::

    capacity = closed_loop(url, images, concurrency=4, duration_s=10).throughput_rps
    report = open_loop(url, images, rate_rps=4 * capacity, duration_s=20)
    print(format_report(report))
    assert report.lost == 0
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bls_pipeline.client import ClassifierClient
from bls_pipeline.devtools.load import FAILED, NO_RETRY, OK, SHED, Answer, Request, Target, clock, drive, send
from bls_pipeline.devtools.stats import percentile

# A request that leaves the load generator this long after it was due means the generator fell
# behind (its sleep loop, or every sender thread busy): the server saw less than the offered rate.
LATE_SEND_S = 0.05
# More than this share of late sends and the report says the run did not offer its rate (a
# loaded machine makes a few sends late; a saturated generator makes most of them late).
LATE_SHARE = 0.05


@dataclass
class LoadReport:
    """How every request of a run ended, with latencies (seconds) by outcome."""

    rate_rps: float | None
    duration_s: float
    # The open loop's sender threads (None: a closed loop).
    max_in_flight: int | None = None
    sent: int = 0
    outcomes: Counter = field(default_factory=Counter)
    shed_reasons: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    latencies_s: dict[str, list[float]] = field(default_factory=lambda: {OK: [], SHED: [], FAILED: []})
    # Requests that left more than LATE_SEND_S after they were due (the load generator fell behind).
    late_sends: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, answer: Answer) -> None:
        """Count one answered request (thread-safe)."""
        with self._lock:
            self.outcomes[answer.outcome] += 1
            self.latencies_s[answer.outcome].append(answer.latency_s)
            if answer.outcome == SHED:
                self.shed_reasons[answer.detail] += 1
            elif answer.outcome == FAILED:
                self.failures[str(answer.error)[:120]] += 1

    def count_late_send(self) -> None:
        """Count one request that left the generator late (thread-safe)."""
        with self._lock:
            self.late_sends += 1

    @property
    def generator_fell_behind(self) -> bool:
        """Whether more than :data:`LATE_SHARE` of an open loop's requests left late, so that the
        server was offered less than ``rate_rps`` and the excess waited in the load generator."""
        return self.rate_rps is not None and self.late_sends > LATE_SHARE * self.sent

    @property
    def answered(self) -> int:
        """Requests that got an answer of any kind."""
        return sum(self.outcomes.values())

    @property
    def lost(self) -> int:
        """Requests sent that got no answer at all (the count that must be 0)."""
        return self.sent - self.answered

    @property
    def throughput_rps(self) -> float:
        """Classified requests per second over the run."""
        return self.outcomes[OK] / self.duration_s if self.duration_s > 0 else 0.0

    def p(self, outcome: str, q: float) -> float:
        """The ``q``-th percentile latency (seconds) of ``outcome`` (0 when none)."""
        values = self.latencies_s[outcome]
        return percentile(values, q) if values else 0.0

    def to_dict(self) -> dict:
        """A JSON-ready summary (no per-request latencies)."""
        return {
            "rate_rps": self.rate_rps,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "ok": self.outcomes[OK],
            "shed": self.outcomes[SHED],
            "failed": self.outcomes[FAILED],
            "lost": self.lost,
            "late_sends": self.late_sends,
            "max_in_flight": self.max_in_flight,
            "generator_fell_behind": self.generator_fell_behind,
            "shed_reasons": dict(self.shed_reasons),
            "failures": dict(self.failures),
            "throughput_rps": self.throughput_rps,
            **{f"{outcome}_p{q}_ms": self.p(outcome, q) * 1e3 for outcome in (OK, SHED) for q in (50, 99)},
            "ok_max_ms": max(self.latencies_s[OK], default=0.0) * 1e3,
        }


def _target(url: str, timeout_s: float) -> Target:
    # No retries: the run counts what the server itself answers.
    return Target(url, retry=NO_RETRY, timeout_s=timeout_s)


def _classify_one(client: ClassifierClient, images: Sequence[bytes], due: float, report: LoadReport) -> None:
    # Measured when a sender thread takes the request, not when it was queued for one: with
    # every sender busy the excess waits in the generator, and the server never sees it.
    if clock() - due > LATE_SEND_S:
        report.count_late_send()
    report.record(send(client, Request(tuple(images)), sent_s=due))


def open_loop(
    url: str,
    requests: Sequence[Sequence[bytes]],
    *,
    rate_rps: float,
    duration_s: float,
    answer_timeout_s: float = 60.0,
    max_in_flight: int = 512,
) -> LoadReport:
    """Send ``requests`` (cycled) at ``rate_rps`` for ``duration_s``, then wait for every answer.

    Each request is handed at its due time to one of ``max_in_flight`` sender threads; a
    request still unanswered ``answer_timeout_s`` after it was due fails with the client's
    timeout, so the run ends and :attr:`LoadReport.lost` counts only requests never answered.
    ``max_in_flight`` must exceed what the server can hold (its queue and its executions) for
    the run to overload it; otherwise the excess waits here, and the report says so
    (:attr:`LoadReport.generator_fell_behind`).
    """
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate_rps} and {duration_s}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    report = LoadReport(rate_rps=rate_rps, duration_s=duration_s, max_in_flight=max_in_flight)
    interval = 1.0 / rate_rps
    with (
        _target(url, answer_timeout_s).client() as client,
        ThreadPoolExecutor(max_in_flight, thread_name_prefix="open-loop") as pool,
    ):
        start = clock()
        index = 0
        while True:
            due = start + index * interval
            if due >= start + duration_s:
                break
            now = clock()
            if due > now:
                time.sleep(due - now)
            pool.submit(_classify_one, client, requests[index % len(requests)], due, report)
            report.sent += 1
            index += 1
    return report


def closed_loop(
    url: str,
    requests: Sequence[Sequence[bytes]],
    *,
    concurrency: int,
    duration_s: float,
    answer_timeout_s: float = 60.0,
) -> LoadReport:
    """``concurrency`` requests (``requests``, cycled) always in flight for ``duration_s``, each
    sent once, and how every one ended."""
    report = LoadReport(rate_rps=None, duration_s=duration_s)
    cycle = itertools.cycle(requests)
    with _target(url, answer_timeout_s).client(concurrency) as client:
        end = clock() + duration_s

        def next_request() -> Request | None:
            if clock() >= end:
                return None
            report.sent += 1
            return Request(tuple(next(cycle)))

        drive(client, next_request, lambda _, answer: report.record(answer), concurrency=concurrency)
    return report


def format_report(report: LoadReport, title: str = "") -> str:
    """One aligned block: outcomes, shed reasons, latencies by outcome."""
    d = report.to_dict()
    rate = f"{report.rate_rps:.1f} requests/s offered" if report.rate_rps else "closed loop"
    rows = [
        ("load", f"{rate} for {report.duration_s:.0f} s: {report.sent} sent"),
        (
            "classified",
            f"{d['ok']} ({report.throughput_rps:.1f}/s), p50 {d['ok_p50_ms']:.0f} ms, p99 {d['ok_p99_ms']:.0f} ms, max {d['ok_max_ms']:.0f} ms",
        ),
        ("shed (UNAVAILABLE)", f"{d['shed']}, p50 {d['shed_p50_ms']:.0f} ms, p99 {d['shed_p99_ms']:.0f} ms"),
        *((f"  {reason}", str(n)) for reason, n in sorted(report.shed_reasons.items())),
        ("failed otherwise", str(d["failed"])),
        *((f"  {message}", str(n)) for message, n in sorted(report.failures.items())),
        ("never answered", str(report.lost)),
        ("late sends", f"{report.late_sends} (left over {LATE_SEND_S * 1e3:.0f} ms after they were due)"),
    ]
    if report.generator_fell_behind:
        rows.append(
            (
                "note",
                f"the load generator fell behind ({report.max_in_flight} senders; "
                f"{report.late_sends / max(report.sent, 1):.0%} of the requests left late): the server "
                "was offered less than the rate above, and much of the late requests' latency was spent "
                "waiting here; raise --max-in-flight or send from more machines",
            )
        )
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    return "\n".join(lines + [f"{name:<{width}}  {value}" for name, value in rows])
