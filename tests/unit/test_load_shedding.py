"""Specification of load shedding's pure parts: the classifier's queue policy, how the client
recognizes a shed request, its retry waits, and what the CLI reports for shed files.

The behaviour against a real server is in tests/e2e/test_overload.py.
"""

from __future__ import annotations

import random
import time

import pytest
from tritonclient.utils import InferenceServerException

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import RepositorySpec
from bls_pipeline.builder.spec import BuildOptions, device_default
from bls_pipeline.client import (
    ClientError,
    PendingRequest,
    RetryPolicy,
    ServerBusy,
    is_unavailable,
    request_failure,
)
from bls_pipeline.client_files import FileResult
from bls_pipeline.errors import ConfigError


@pytest.mark.parametrize(("device", "size", "timeout_ms"), [("cpu", 8, 2000), ("gpu", 512, 1000)])
def test_the_classifier_alone_gets_a_rejecting_queue_policy_with_the_devices_defaults(device, size, timeout_ms) -> None:
    tuned = BuildOptions().tuned(device)
    assert (tuned["max_queue_size"], tuned["queue_timeout_ms"]) == (size, timeout_ms)
    runtime = "tensorrt" if device == "gpu" else "onnxruntime"
    spec = RepositorySpec(
        target="triton", device=device, runtime=runtime, max_batch_size=8, num_classes=1000,
        max_queue_size=tuned["max_queue_size"], queue_timeout_ms=tuned["queue_timeout_ms"],
    )  # fmt: skip
    configs = spec.configs()
    policy = configs[mc.CLASSIFIER].dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (size, timeout_ms * 1000)
    assert policy.timeout_action == mc.model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.allow_timeout_override
    for model in (mc.PREPROCESSING, mc.NETWORK):
        assert not configs[model].dynamic_batching.HasField("default_queue_policy")


def test_given_queue_bounds_replace_the_defaults() -> None:
    spec = RepositorySpec(target="local", max_batch_size=8, num_classes=10, max_queue_size=0, queue_timeout_ms=300)
    policy = spec.configs()[mc.CLASSIFIER].dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (0, 300_000)


def test_the_queue_policy_round_trips_through_config_text() -> None:
    config = mc.classifier_config(max_batch_size=4, queue=mc.QueuePolicy(max_queue_size=3, timeout_ms=250))
    text = mc.config_text(config)
    assert "max_queue_size: 3" in text and "default_timeout_microseconds: 250000" in text
    assert mc.text_format.Parse(text, mc.ModelConfig()) == config


def test_zero_turns_a_bound_off_and_negative_bounds_are_refused() -> None:
    config = mc.classifier_config(max_batch_size=4, queue=mc.QueuePolicy(max_queue_size=0, timeout_ms=0))
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 0
    with pytest.raises(ConfigError, match="0 \\(unbounded\\) or more"):
        mc.QueuePolicy(max_queue_size=-1, timeout_ms=100)


@pytest.mark.parametrize(
    "status, message, busy, reason",
    [
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", True, "queue full"),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", True, "waited longer than the queue timeout"),
        ("503", "Exceeds maximum queue size", True, "queue full"),
        ("StatusCode.INVALID_ARGUMENT", "image 0: not an image", False, None),
        # gRPC's own UNAVAILABLE: no server answered, nothing was shed.
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses; last error: Connection refused", False, None),
        ("400", "image 0: not an image", False, None),
    ],
)
def test_unavailable_is_a_shed_request_with_its_reason_in_one_line(status, message, busy, reason) -> None:
    exc = InferenceServerException(message, status=status)
    assert is_unavailable(exc) is busy
    failure = request_failure(exc, attempts=4, waited_s=1.25)
    assert isinstance(failure, ServerBusy) is busy
    if busy:
        assert str(failure) == f"server busy: {reason}, retry later (4 attempts over 1.2 s)"
        assert failure.reason == reason
        assert "\n" not in str(failure)


def test_retry_waits_are_jittered_below_a_doubling_bound_that_stops_at_the_maximum() -> None:
    policy = RetryPolicy(deadline_s=10.0, first_wait_s=0.1, max_wait_s=0.8)
    waits = policy.waits(random.Random(0))
    drawn = [next(waits) for _ in range(200)]
    bounds = [0.1, 0.2, 0.4] + [0.8] * 197
    assert all(0.0 <= wait <= bound for wait, bound in zip(drawn, bounds))
    # Jitter: the waits under the same bound differ, and use most of the range.
    tail = drawn[3:]
    assert len(set(tail)) == len(tail) and max(tail) > 0.6 and min(tail) < 0.2


def test_two_clients_shed_together_do_not_retry_together() -> None:
    first = RetryPolicy().waits(random.Random(1))
    second = RetryPolicy().waits(random.Random(2))
    assert [next(first) for _ in range(5)] != [next(second) for _ in range(5)]


def test_a_request_shed_until_the_deadline_counts_its_sends_and_waits_with_the_clients_sleep() -> None:
    def shed() -> None:
        raise InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    policy = RetryPolicy(deadline_s=0.2, first_wait_s=0.02, max_wait_s=0.02)
    pending = PendingRequest(shed, policy, random.Random(0), sleep=sleep)

    with pytest.raises(ServerBusy, match=r"server busy: queue full, retry later \(\d+ attempts over") as raised:
        pending.result()

    assert waits and pending.attempts == len(waits) + 1
    assert f"({pending.attempts} attempts over" in str(raised.value)
    never = PendingRequest(shed, RetryPolicy(deadline_s=0.0), random.Random(0), sleep=sleep)
    with pytest.raises(ServerBusy, match="not retried"):
        never.result()
    assert never.attempts == 1


@pytest.mark.parametrize("kwargs", [{"deadline_s": -1}, {"first_wait_s": 0}, {"first_wait_s": 2, "max_wait_s": 1}])
def test_a_retry_policy_out_of_range_is_refused(kwargs) -> None:
    with pytest.raises(ClientError, match="invalid retry policy"):
        RetryPolicy(**kwargs)


def test_a_shed_file_says_so_in_json() -> None:
    shed = FileResult("a.jpg", error="shed: server busy: queue full, retry later (5 attempts over 30.0 s)", shed=True)
    assert shed.to_json() == {"file": "a.jpg", "error": shed.error, "shed": True}
    assert "shed" not in FileResult("b.jpg", error="not an image").to_json()


def test_a_built_repositorys_queue_policy_changes_where_given(tmp_path) -> None:
    from bls_pipeline.builder.repository import change_queue_policy

    (tmp_path / mc.CLASSIFIER).mkdir()
    path = tmp_path / mc.CLASSIFIER / "config.pbtxt"
    mc.write_config(path, RepositorySpec(target="local", max_batch_size=8, num_classes=10).configs()[mc.CLASSIFIER])

    assert change_queue_policy(tmp_path, max_queue_size=1) == mc.QueuePolicy(
        1, device_default("queue_timeout_ms", "cpu")
    )
    assert change_queue_policy(tmp_path, timeout_ms=0) == mc.QueuePolicy(1, 0)
    policy = mc.read_config(path).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds, policy.allow_timeout_override) == (1, 0, True)
