"""The soak's pure parts: request mix, outcome rules, memory readings, report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bls_pipeline.devtools.soak import (
    EXPECTED,
    OK,
    UNEXPECTED,
    MemorySnapshot,
    Sample,
    SoakOptions,
    SoakReport,
    Tally,
    choose,
    corrupt_png_data,
    encode_image,
    format_report,
    growth_percent,
    huge_jpeg_header,
    judge,
    peak_sample,
    read_rss_kib,
    segment_bytes,
)
from bls_pipeline.request.image_header import ImageHeaderError, check_image

GOOD = Sample("cat.jpg", (b"\xff\xd8",))
BAD = Sample("empty", (b"",), "image 0: empty image")


@pytest.mark.parametrize(
    ("sample", "status", "message", "outcome"),
    [
        (GOOD, None, None, OK),
        (GOOD, "400", "image 0: empty image", UNEXPECTED),
        (GOOD, "500", "preprocessing: Stub process 'preprocessing_0_0' is not healthy.", UNEXPECTED),
        (BAD, "400", "image 0: empty image", EXPECTED),
        (BAD, None, None, UNEXPECTED),
        (BAD, "400", "image 1: empty image", UNEXPECTED),
        (BAD, "500", "image 0: empty image", UNEXPECTED),
        (BAD, "connection", "ConnectionResetError: ...", UNEXPECTED),
    ],
)
def test_only_the_expected_refusal_of_a_bad_image_and_success_of_a_good_one_pass(sample, status, message, outcome):
    assert judge(sample, status, message) == outcome


def test_tally_counts_outcomes_by_kind_and_keeps_the_first_unexpected_messages():
    tally = Tally(max_examples=1)
    tally.record(GOOD, OK, 0.01)
    tally.record(BAD, EXPECTED, 0.02, "image 0: empty image")
    tally.record(BAD, EXPECTED, 0.02, "image 0: empty image")
    tally.record(GOOD, UNEXPECTED, 0.5, "boom")
    tally.record(BAD, UNEXPECTED, 0.5)

    assert (tally.count(OK), tally.count(EXPECTED), tally.count(UNEXPECTED)) == (1, 2, 2)
    assert tally.by_kind(EXPECTED) == {"empty": 2}
    assert tally.by_kind(UNEXPECTED) == {"cat.jpg": 1, "empty": 1}
    assert tally.unexpected_examples == ["cat.jpg: boom"]


def test_the_request_mix_is_seeded_and_has_the_asked_share_of_bad_requests():
    good = [Sample(f"good{i}", (b"g",)) for i in range(3)]
    bad = [Sample(f"bad{i}", (b"b",), "x") for i in range(5)]

    plan = choose(good, bad, 10_000, 0.2, seed=7)

    assert plan == choose(good, bad, 10_000, 0.2, seed=7)
    assert sum(s.bad for s in plan) == pytest.approx(2000, abs=200)
    assert {s.kind for s in plan} == {s.kind for s in good + bad}
    assert not any(s.bad for s in choose(good, bad, 100, 0.0, seed=1))
    assert all(s.bad for s in choose(good, bad, 100, 1.0, seed=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requests": 0}, "requests must be at least 1"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"bad_fraction": 1.5}, "bad fraction must be in 0..1"),
        ({"requests": 10, "warmup": 10}, "warm-up must be in 0..9"),
    ],
)
def test_soak_options_refuse_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoakOptions(url="x", **kwargs)


@pytest.mark.parametrize(("requests", "warmup"), [(20_000, 1000), (5000, 500), (200, 20), (5, 0)])
def test_warm_up_is_a_tenth_of_the_requests_up_to_a_thousand(requests, warmup):
    assert SoakOptions(url="x", requests=requests).warmup_requests == warmup


def test_rss_is_read_from_proc_status_in_kib(tmp_path: Path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\ttritonserver\nVmPeak:\t 999 kB\nVmRSS:\t  123456 kB\n")
    (tmp_path / "43").mkdir()
    (tmp_path / "43" / "status").write_text("Name:\tzombie\nState:\tZ (zombie)\n")

    (tmp_path / "45").mkdir()
    (tmp_path / "45" / "status").write_text("Name:\ttritonserver\nVmRSS:\t  900000 kB\nRssShmem:\t  300000 kB\n")

    assert read_rss_kib(42, proc=tmp_path) == 123456
    assert read_rss_kib(43, proc=tmp_path) == 0
    assert read_rss_kib(44, proc=tmp_path) == 0
    # Pages of the stubs' /dev/shm regions that the server touched: counted once, as /dev/shm.
    assert read_rss_kib(45, proc=tmp_path) == 600000
    assert read_rss_kib(os.getpid()) > 1000  # this Python, from the real /proc


def test_shared_memory_counts_the_blocks_written_not_the_declared_size(tmp_path: Path):
    with open(tmp_path / "sparse", "wb") as file:
        file.truncate(64 * 2**20)
    (tmp_path / "written").write_bytes(b"\x01" * 2**20)

    assert segment_bytes(["sparse"], shm_dir=tmp_path) < 2**16
    assert segment_bytes(["written", "missing"], shm_dir=tmp_path) >= 2**20


@pytest.mark.parametrize(("before", "after", "percent"), [(100, 105, 5.0), (200, 150, -25.0), (0, 10, 0.0)])
def test_growth_is_relative_to_the_warm_reading(before, after, percent):
    assert growth_percent(before, after) == pytest.approx(percent)


def test_the_crafted_bad_images_fail_where_they_are_meant_to(photos_png: bytes):
    with pytest.raises(ImageHeaderError, match="declares 65000x65000 = 4225000000 pixels"):
        check_image(huge_jpeg_header(), max_bytes=10**6, max_pixels=40_000_000)
    # passes every header check: only the decoder can refuse it
    header = check_image(corrupt_png_data(photos_png), max_bytes=10**7, max_pixels=10**7)
    assert header.format == "png"


@pytest.fixture()
def photos_png() -> bytes:
    import numpy as np

    return encode_image(np.full((32, 48, 3), 90, np.uint8), "PNG")


def report(**memory: MemorySnapshot) -> SoakReport:
    return SoakReport(
        requests=100,
        concurrency=4,
        ok=80,
        expected_errors={"empty": 12, "GIF": 8},
        unexpected=0,
        unexpected_by_kind={},
        unexpected_examples=[],
        duration_s=10.0,
        throughput_rps=10.0,
        latency_p50_ms=50.0,
        latency_p99_ms=90.0,
        memory=memory,
    )


def test_the_report_table_lists_errors_by_kind_memory_by_phase_and_growth():
    text = format_report(
        report(
            start=MemorySnapshot(300 * 1024, 2**20, 4),
            warm=MemorySnapshot(400 * 1024, 2**20, 4),
            end=MemorySnapshot(410 * 1024, 2**20, 4),
        )
    )

    assert "INVALID_ARG: empty" in text and "INVALID_ARG: GIF" in text
    assert "UNEXPECTED" in text
    assert "memory at warm" in text and "RSS 400.0 MiB (4 processes)" in text
    assert "RSS growth after warm-up        +2.50 %" in text


def test_the_json_report_has_growth_figures_or_none_without_memory_readings():
    with_memory = report(warm=MemorySnapshot(1000, 0, 1), end=MemorySnapshot(1100, 0, 1)).to_dict()
    without = report().to_dict()

    assert with_memory["rss_growth_percent"] == pytest.approx(10.0)
    assert with_memory["memory"]["end"]["rss_kib"] == 1100
    assert without["rss_growth_percent"] is None


def test_the_cli_documents_every_flag(capsys):
    from bls_pipeline.cli.soak import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--url",
        "--model-repository",
        "--server-pid",
        "--requests",
        "--concurrency",
        "--bad-fraction",
        "--warmup",
        "--seed",
        "--max-growth",
        "--json-out",
        "--quiet",
    ):
        assert flag in text


def test_the_cli_refuses_impossible_options_with_one_line(capsys):
    from bls_pipeline.cli.soak import main

    assert main(["--url", "127.0.0.1:1", "--requests", "0"]) == 2
    assert capsys.readouterr().err == "soak: error: requests must be at least 1, got 0\n"


def test_gpu_memory_per_process_is_parsed_from_nvidia_smis_csv():
    from bls_pipeline.devtools.soak import parse_compute_apps

    text = "1234, 2048\n5678, 600\n1234, 100\n[N/A], [N/A]\n"
    assert parse_compute_apps(text) == {1234: 2148, 5678: 600}
    assert parse_compute_apps("") == {}


def test_every_memory_kind_gets_a_growth_verdict_where_it_was_read():
    warm = MemorySnapshot(1000, 2**20, 3, {"tritonserver": 1000}, {"tritonserver": 1000, "classifier": 500})
    end = MemorySnapshot(1020, 2**20, 3, {"tritonserver": 1020}, {"tritonserver": 1000, "classifier": 600})
    verdicts = report(warm=warm, end=end).growth_verdicts(5.0)

    assert verdicts["RSS"] == (pytest.approx(2.0), True)
    assert verdicts["/dev/shm"] == (0.0, True)
    assert verdicts["GPU memory"] == (pytest.approx(100 / 15), False)
    cpu_only = report(warm=MemorySnapshot(1000, 0, 1), end=MemorySnapshot(1000, 0, 1)).growth_verdicts(5.0)
    assert "GPU memory" not in cpu_only
    text = format_report(report(warm=warm, end=end), max_growth=5.0)
    assert "verdict: GPU memory" in text and "FAILED (limit 5 %)" in text and "GPU classifier" in text


def test_the_report_names_each_stub_whose_shared_memory_region_grew():
    mib = 2**20
    warm = MemorySnapshot(1000, 148 * mib, 3, shm_by_process={"classifier": 74 * mib, "classifier (pid 7)": 74 * mib})
    end = MemorySnapshot(1000, 222 * mib, 3, shm_by_process={"classifier": 74 * mib, "classifier (pid 7)": 148 * mib})

    lines = [line.split() for line in format_report(report(warm=warm, end=end)).splitlines()]

    assert [line for line in lines if line[0] == "shm"] == [
        ["shm", "classifier", "(pid", "7)", "74.0", "->", "148.0", "MiB"]
    ]


def test_good_requests_carry_the_asked_number_of_photographs():
    from bls_pipeline.devtools.soak import photo_batches

    good = [Sample("a.jpg", (b"a",)), Sample("b.png", (b"b",))]
    assert photo_batches(good, 1) == good
    batches = photo_batches(good, 3)
    assert [b.images for b in batches] == [(b"a", b"b", b"a"), (b"b", b"a", b"b")] and not any(b.bad for b in batches)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_s": 0}, "duration must be positive"),
        ({"duration_s": 10, "warmup_s": 10}, "warm-up in seconds goes with a longer --duration"),
        ({"warmup_s": 1}, "warm-up in seconds goes with a longer --duration"),
        ({"images_per_request": 0}, "images per request must be at least 1"),
        ({"peak_requests": -1}, "peak requests must be 0 or more"),
    ],
)
def test_timed_soak_options_refuse_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoakOptions(url="x", **kwargs)


def test_a_timed_soak_warms_up_for_a_tenth_of_it_up_to_a_minute():
    assert SoakOptions(url="x", duration_s=660).warmup_seconds == 60.0
    assert SoakOptions(url="x", duration_s=100).warmup_seconds == 10.0
    assert SoakOptions(url="x", duration_s=100, warmup_s=5).warmup_seconds == 5.0


def test_the_warm_up_peak_sends_full_batches_of_the_largest_photograph_with_a_queue_behind_each_instance():
    good = [Sample("small", (b"a" * 10,)), Sample("pair", (b"b" * 30, b"c" * 20))]

    peak = peak_sample(good, max_batch_size=128)

    assert peak.images == (b"b" * 30,) * 128 and not peak.bad
    assert peak.kind == "peak: 128 x 0 KB"
    options = SoakOptions(url="x", concurrency=8)
    assert options.peak_concurrency == 32 and options.peak_total == 64
    assert SoakOptions(url="x", concurrency=8, peak_requests=0).peak_total == 0
    assert SoakOptions(url="x", concurrency=8, peak_requests=5).peak_total == 5


def test_growth_compares_medians_of_readings_when_the_trace_has_enough_after_the_warm_up():
    def snap(mib: int) -> MemorySnapshot:
        return MemorySnapshot(mib * 1024, 0, 1)

    # A server that swings by 20 % without a trend: the single end reading (1200) against the
    # warm one (1000) says +20 %; the medians of five readings each say it did not grow.
    swinging = [1000, 1200, 900, 1100, 1000, 1100, 950, 1000, 900, 1200]
    trace = [(10.0 * (i + 1), i, snap(mib)) for i, mib in enumerate(swinging)]
    flat = report(warm=snap(1000), end=snap(1200))
    flat.memory_trace, flat.warm_at_s = trace, 10.0
    assert flat.rss_growth_percent == pytest.approx(0.0)
    assert "median of the last 5 readings" in flat.growth_basis

    # Steady growth shows as growth.
    rising = report(warm=snap(1000), end=snap(1900))
    rising.memory_trace = [(10.0 * (i + 1), i, snap(1000 + 100 * i)) for i in range(10)]
    rising.warm_at_s = 10.0
    assert rising.rss_growth_percent == pytest.approx((1700 - 1200) / 1200 * 100)

    # Readings before the warm-up do not count; with too few after it, the two readings do.
    rising.warm_at_s = 60.0
    assert rising.rss_growth_percent == pytest.approx(90.0)
    assert rising.growth_basis == "the end reading against the warm-up reading"
