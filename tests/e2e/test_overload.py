"""Overload against the real CPU server: open-loop traffic at several times its capacity, and
``tools/classify.py`` against a server that sheds.

The repository is the session's native CPU build, with the classifier's default queue policy.
Every request must be answered (classified, or shed with UNAVAILABLE; nothing hangs, nothing
is lost), the classified ones within the policy's bound, the refusals fast; memory stays
flat and the server is ready and at full speed right after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bls_pipeline.builder.model_config import CLASSIFIER, read_config
from bls_pipeline.devtools.overload import FAILED, OK, SHED, closed_loop, format_report, open_loop
from bls_pipeline.devtools.soak import build_samples, growth_percent, server_memory
from tests.e2e._support import start_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

OVERLOAD = 4.0  # offered load, times the measured capacity
DURATION_S = 15.0


@pytest.fixture(scope="module")
def server(native_repository, tmp_path_factory):
    server = start_server(native_repository, tmp_path_factory.mktemp("overload") / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def test_open_loop_overload_is_shed_cleanly_and_the_server_recovers_at_full_speed(server, capsys):
    policy = read_config(
        server.options.model_repository / CLASSIFIER / "config.pbtxt"
    ).dynamic_batching.default_queue_policy
    assert policy.max_queue_size > 0 and policy.default_timeout_microseconds > 0
    requests = [sample.images for sample in build_samples()[0]]
    before = closed_loop(server.grpc_url, requests, concurrency=8, duration_s=8.0)
    memory_before = server_memory(server.process.pid)

    report = open_loop(server.grpc_url, requests, rate_rps=OVERLOAD * before.throughput_rps, duration_s=DURATION_S)

    memory_after = server_memory(server.process.pid)
    after = closed_loop(server.grpc_url, requests, concurrency=8, duration_s=8.0)
    with capsys.disabled():
        print(
            "\n"
            + "\n\n".join(
                format_report(r, title) for r, title in [(before, "before"), (report, "overload"), (after, "after")]
            )
        )
    # Every request answered: a result or a clear refusal, none lost, none failed otherwise.
    assert report.sent == report.answered and report.lost == 0
    assert report.outcomes[FAILED] == 0, report.failures
    assert report.outcomes[SHED] > 0 and report.outcomes[OK] > 0
    assert set(report.shed_reasons) <= {"queue full", "waited longer than the queue timeout"}
    # The classified ones waited at most the queue timeout, then ran in a batch of at most a
    # full queue: the bound the policy sets, with one more full queue's time for the load
    # generator's share of the same two cores.
    bound_s = policy.default_timeout_microseconds / 1e6 + 2 * policy.max_queue_size / before.throughput_rps
    assert report.p(OK, 99) < bound_s, (
        f"classified p99 {report.p(OK, 99):.2f} s over the policy's bound {bound_s:.2f} s"
    )
    # Refusals come back fast: most are "queue full", answered at once.
    assert report.shed_reasons["queue full"] > report.outcomes[SHED] / 2
    assert report.p(SHED, 50) < report.p(OK, 50) / 5
    # Memory flat: the queue is bounded, so are the payloads it holds.
    assert growth_percent(memory_before.total_mib, memory_after.total_mib) < 5.0, (memory_before, memory_after)
    # Healthy and at full speed right after, shedding nothing.
    assert server.is_ready()
    assert after.outcomes[SHED] == 0 and after.outcomes[FAILED] == 0
    assert after.throughput_rps > 0.7 * before.throughput_rps


def test_an_open_loop_with_too_few_senders_says_the_backlog_was_its_own(server):
    # One sender at five times the rate it can send at one request at a time: the excess
    # waits in the load generator, so the server sheds nothing and the report must say why.
    requests = [sample.images for sample in build_samples()[0]]
    one_at_a_time = closed_loop(server.grpc_url, requests, concurrency=1, duration_s=2.0).throughput_rps

    report = open_loop(server.grpc_url, requests, rate_rps=5 * one_at_a_time, duration_s=1.0, max_in_flight=1)

    assert report.lost == 0 and report.outcomes[SHED] == 0 and report.outcomes[FAILED] == 0
    assert report.generator_fell_behind, (report.late_sends, report.sent)
    assert "the load generator fell behind (1 senders;" in format_report(report)


@pytest.fixture(scope="module")
def tiny_queue_server(native_repository, tmp_path_factory):
    """A server whose classifier queues one request: a few concurrent ones are enough to shed."""
    import shutil

    from bls_pipeline.builder.repository import change_queue_policy

    repository = tmp_path_factory.mktemp("tiny-queue") / "model_repository"
    shutil.copytree(native_repository, repository, symlinks=True)
    change_queue_policy(repository, max_queue_size=1, timeout_ms=0)
    server = start_server(repository, repository.parent / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def _classify(server, folder, *args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "classify.py"), "--url", server.grpc_url, "--json", "--batch-size", "1",
         "--concurrency", "16", *args, str(folder)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_classify_reports_the_files_a_busy_server_shed_and_retrying_classifies_them(tiny_queue_server, tmp_path):
    import json
    import shutil

    for index in range(48):
        shutil.copy(ROOT / "samples" / "chelsea.jpg", tmp_path / f"cat{index:02d}.jpg")

    shed = _classify(tiny_queue_server, tmp_path, "--retry-deadline", "0")

    entries = json.loads(shed.stdout)
    shed_files = [entry for entry in entries if entry.get("shed")]
    assert shed.returncode == 1 and "Traceback" not in shed.stderr
    assert shed_files and all(entry["error"].startswith("shed: server busy: queue full") for entry in shed_files)
    assert f"{len(shed_files)} of 48 files shed by a busy server" in shed.stderr
    assert all(entry["predictions"][0]["class_id"] == 285 for entry in entries if not entry.get("shed"))

    retried = _classify(tiny_queue_server, tmp_path, "--retry-deadline", "120")

    assert retried.returncode == 0, retried.stderr
    assert [entry["predictions"][0]["class_id"] for entry in json.loads(retried.stdout)] == [285] * 48
