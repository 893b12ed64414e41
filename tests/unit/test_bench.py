"""Specification of the benchmark's pure parts: statistics, ratios, targets, result schema."""

from __future__ import annotations

import base64
import copy
import io

import pytest
from PIL import Image

from bls_pipeline.builder import model_config as mc
from bls_pipeline.devtools.bench.images import BenchImage, benchmark_images, render_photo
from bls_pipeline.devtools.bench.report import format_table, perf_analyzer_data
from bls_pipeline.devtools.bench.run import (
    BenchOptions,
    assemble_result,
    check_result_schema,
    check_targets,
    compute_ratios,
    served_max_batch_size,
)
from bls_pipeline.devtools.load import NO_RETRY, LoadSample, Target, cyclic_groups
from bls_pipeline.devtools.stats import Spread, latency_percentiles, percentile
from bls_pipeline.errors import BenchError, ConfigError


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 25, 1.75),
        (list(range(1, 101)), 99, 99.01),
    ],
)
def test_percentile_interpolates_linearly_between_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_no_values_and_out_of_range_q(values, q):
    with pytest.raises(ValueError):
        percentile(values, q)


def test_spread_reports_median_min_max_and_quartiles():
    spread = Spread.of([10.0, 30.0, 20.0])

    assert (spread.median, spread.min, spread.max, spread.n) == (20.0, 10.0, 30.0, 3)
    assert (spread.q1, spread.q3) == (15.0, 25.0)
    assert spread.relative_range() == pytest.approx(1.0)


def test_spread_of_an_even_count_takes_the_mean_of_the_middle_two():
    assert Spread.of([1.0, 2.0, 3.0, 10.0]).median == 2.5


def test_latency_percentiles_are_milliseconds():
    latencies = [0.001 * i for i in range(1, 101)]

    assert latency_percentiles(latencies) == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01})


def test_ratios_divide_the_bls_throughput_by_each_reference_the_in_process_limit_being_the_pipelined_one():
    ratios = compute_ratios({"bls": 90.0, "inprocess": 100.0, "pipelined": 150.0, "ensemble": 80.0, "naive": 60.0})

    assert ratios == pytest.approx(
        {"bls_vs_inprocess": 0.6, "bls_vs_inprocess_serial": 0.9, "bls_vs_ensemble": 1.125, "bls_vs_naive": 1.5}
    )


def test_the_native_hosting_is_compared_with_the_pipelined_limit_too():
    ratios = compute_ratios(
        {"bls": 90.0, "inprocess": 100.0, "pipelined": 150.0, "ensemble": 80.0, "naive": 60.0,
         "bls_native": 120.0, "ensemble_native": 100.0}
    )  # fmt: skip

    assert ratios["bls_native_vs_inprocess"] == pytest.approx(0.8)
    assert ratios["bls_native_vs_inprocess_serial"] == pytest.approx(1.2)


def test_without_a_pipelined_figure_the_limit_is_the_serial_one():
    ratios = compute_ratios({"bls": 90.0, "inprocess": 100.0, "ensemble": 80.0, "naive": 60.0})

    assert ratios["bls_vs_inprocess"] == ratios["bls_vs_inprocess_serial"] == pytest.approx(0.9)


@pytest.mark.parametrize("missing", ["bls", "inprocess", "ensemble", "naive"])
def test_ratios_need_a_positive_throughput_for_every_term(missing):
    values = {"bls": 90.0, "inprocess": 100.0, "ensemble": 80.0, "naive": 60.0, missing: 0.0}

    with pytest.raises(ValueError, match=missing):
        compute_ratios(values)


def test_targets_compare_ratios_and_the_latency_budget():
    ratios = {"bls_vs_inprocess": 0.9, "bls_vs_ensemble": 0.99, "bls_vs_naive": 1.1}
    checks = check_targets(ratios, {"inprocess_single": 5.0, "bls_p50_c1": 8.0})

    assert {name: check["met"] for name, check in checks.items()} == {
        "bls_vs_inprocess": True,
        "bls_vs_ensemble": False,
        "bls_vs_naive": True,
        "bls_p50_c1": True,
    }
    assert not check_targets(ratios, {"inprocess_single": 5.0, "bls_p50_c1": 8.01})["bls_p50_c1"]["met"]
    assert "pipelined" in checks["bls_vs_inprocess"]["target"]
    assert (
        "serial"
        in check_targets(ratios, {"inprocess_single": 5.0, "bls_p50_c1": 8.0}, limit="inprocess")["bls_vs_inprocess"][
            "target"
        ]
    )


MACHINE = {"cpu_count": 2, "cpu_model": "test", "platform": "linux", "python": "3.11", "versions": {}}


def _result(*, pipelined: bool = True) -> dict:
    options = BenchOptions(repository=None, repeats=2, concurrencies=(1, 4), batch_sizes=(1, 4))
    in_process = [
        {
            "preprocessing": {1: 400.0 + r, 4: 500.0},
            "network": {1: 300.0, 4: 320.0 + r},
            "inprocess": {1: 150.0, 4: 160.0 + r},
            "cpu_ms_per_image": {1: 10.0, 4: 9.0},
            **(
                {"pipelined": {1: 170.0, 4: 200.0 + r}, "pipelined_cpu_ms_per_image": {1: 11.0, 4: 9.5}}
                if pipelined
                else {"pipelined_absent": "DALI cannot prefetch this pipeline: an operator needs synchronous execution"}
            ),
            "single_ms": {1: 6.0 + r},
        }
        for r in range(2)
    ]
    throughput = {"bls": 140.0, "ensemble": 130.0, "naive": 120.0}
    endpoints = {
        key: {c: [LoadSample(value + c + r, [0.005, 0.006, 0.007 + r * 0.001], 3) for r in range(2)] for c in (1, 4)}
        for key, value in throughput.items()
    }
    images = [BenchImage("a", b"\xff\xd8", 500, 375)]
    return assemble_result(options, images, MACHINE, {}, {}, in_process, endpoints)


def test_assembled_result_passes_its_schema_check():
    result = _result()

    check_result_schema(result)
    assert set(result["ratios"]) == {"bls_vs_inprocess", "bls_vs_inprocess_serial", "bls_vs_ensemble", "bls_vs_naive"}
    assert {"bls_p50_c1", "inprocess_single"} <= set(result["latency_ms"])


def test_assembled_result_reports_medians_and_best_values():
    result = _result()

    assert result["images_per_s"]["inprocess"] == pytest.approx(160.5)  # batch 4, median of 160 and 161
    assert result["images_per_s"]["pipelined"] == pytest.approx(200.5)
    assert result["images_per_s"]["bls"] == pytest.approx(144.5)  # c4: 144 and 145
    assert result["best_at"]["bls"] == "c4"
    assert result["latency_ms"]["inprocess_single"] == pytest.approx(6.5)
    assert result["in_process_limit"] == {"stage": "pipelined", "images_per_s": pytest.approx(200.5), "at": "batch_4"}
    assert result["ratios"]["bls_vs_inprocess"] == pytest.approx(144.5 / 200.5)
    assert result["ratios"]["bls_vs_inprocess_serial"] == pytest.approx(144.5 / 160.5)
    assert result["targets"]["bls_vs_inprocess"]["value"] == pytest.approx(144.5 / 200.5)
    # Both CPU figures per image; the serial one at batch 1 stays the CPU ratios' reference.
    assert (result["cpu_ms_per_image"]["inprocess_batch_1"], result["cpu_ms_per_image"]["pipelined_batch_4"]) == (
        10.0,
        9.5,
    )
    assert result["endpoints"]["bls"]["c1"]["images_per_s"] == pytest.approx(
        {"median": 141.5, "min": 141.0, "max": 142.0, "q1": 141.25, "q3": 141.75, "n": 2}
    )


def test_a_pipeline_that_cannot_prefetch_has_the_serial_limit_and_says_why():
    result = _result(pipelined=False)

    check_result_schema(result)
    assert "pipelined" not in result["images_per_s"] and "pipelined" not in result["in_process"]
    assert not any(key.startswith("pipelined") for key in result["cpu_ms_per_image"])
    assert result["in_process_limit"]["stage"] == "inprocess"
    assert "synchronous execution" in result["in_process_limit"]["pipelined_absent"]
    assert result["ratios"]["bls_vs_inprocess"] == pytest.approx(144.5 / 160.5)
    assert "serial" in result["targets"]["bls_vs_inprocess"]["target"]
    assert "no pipelined figure: DALI cannot prefetch" in format_table(result)


def test_the_table_shows_the_serial_and_the_pipelined_figures_and_names_the_limit():
    table = format_table(_result())
    lines = table.splitlines()

    serial = [line for line in lines if line.startswith("3a. serial: DALI, then network")]
    pipelined = [line for line in lines if line.startswith("3b. pipelined (the limit)")]
    assert [line.split()[5] for line in serial] == [line.split()[4] for line in pipelined] == ["1", "4"]
    assert "200.5 [200.0-201.0]" in pipelined[1]
    # Each figure is followed by its CPU per image.
    cpu = [index for index, line in enumerate(lines) if "CPU per image" in line]
    assert len(cpu) == 4 and cpu[2] > lines.index(pipelined[1])
    assert "in-process limit: pipelined, 200.5 images/s at batch 4 (serial 160.5)" in table
    assert "bls_vs_inprocess_serial    0.900  (no target)" in table


def test_a_result_written_before_the_pipelined_figure_still_prints():
    result = _result()
    del result["in_process"]["pipelined"], result["in_process_limit"]

    assert "3a. serial" in format_table(result) and "3b." not in format_table(result)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("ratios", "bls_vs_naive"), None, "ratios.bls_vs_naive"),
        (("latency_ms", "bls_p50_c1"), 0.0, "latency_ms.bls_p50_c1"),
        (("images_per_s", "bls"), float("nan"), "images_per_s.bls"),
        (("endpoints", "naive"), {}, "naive"),
        (("machine", "cpu_model"), None, "machine.cpu_model"),
    ],
)
def test_schema_check_names_what_is_missing_or_not_positive(path, value, message):
    result = copy.deepcopy(_result())
    section, key = path
    if value is None:
        del result[section][key]
    else:
        result[section][key] = value

    with pytest.raises(BenchError, match=message.replace(".", r"\.").replace("[", r"\[")):
        check_result_schema(result)


def test_rendered_photo_is_a_deterministic_500x375_jpeg():
    import numpy as np

    array = np.random.default_rng(0).integers(0, 255, (300, 451, 3), dtype=np.uint8)
    first, second = render_photo(array), render_photo(array)

    assert first == second
    with Image.open(io.BytesIO(first)) as image:
        assert (image.format, image.size) == ("JPEG", (500, 375))


def test_perf_analyzer_data_sends_each_image_unpadded_as_one_request():
    images = [BenchImage("a", b"\xff\xd8abc\xff\xd9", 1, 1), BenchImage("b", b"\xff\xd8a\xff\xd9", 1, 1)]

    data = perf_analyzer_data(images)["data"]

    rows = [base64.b64decode(entry["IMAGE"]["b64"]) for entry in data]
    assert [entry["IMAGE"]["shape"] for entry in data] == [[7], [5]]
    assert rows == [image.data for image in images]


def test_ensemble_config_round_trips_and_chains_its_steps(tmp_path):
    config = mc.ensemble_config(
        name="ens",
        max_batch_size=8,
        inputs=[mc.tensor_spec("IMAGE", "TYPE_UINT8", [-1])],
        outputs=[mc.tensor_spec("OUT", "TYPE_FP32", [10])],
        steps=[
            mc.EnsembleStep("pre", {"DALI_INPUT": "IMAGE"}, {"DALI_OUTPUT": "x"}),
            mc.EnsembleStep("net", {"INPUT": "x"}, {"OUTPUT": "OUT"}),
        ],
    )

    assert config.platform == "ensemble"
    assert [step.model_name for step in config.ensemble_scheduling.step] == ["pre", "net"]
    assert mc.read_config(mc.write_config(tmp_path / "config.pbtxt", config)) == config


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "at least one step"),
        ([mc.EnsembleStep("net", {"INPUT": "nothing"}, {"OUTPUT": "OUT"})], "nothing produces"),
        ([mc.EnsembleStep("net", {"INPUT": "IMAGE"}, {"OUTPUT": "other"})], "produced by no step"),
    ],
)
def test_ensemble_config_refuses_broken_chains(steps, message):
    with pytest.raises(ConfigError, match=message):
        mc.ensemble_config(
            name="ens",
            max_batch_size=8,
            inputs=[mc.tensor_spec("IMAGE", "TYPE_UINT8", [-1])],
            outputs=[mc.tensor_spec("OUT", "TYPE_FP32", [10])],
            steps=steps,
        )


@pytest.mark.parametrize("per_request", [1, 3])
def test_load_requests_carry_padded_rows_of_consecutive_images(per_request):
    images = benchmark_images()[:4]

    groups = cyclic_groups([image.data for image in images], per_request)
    # What the load driver's client sends for one of them (it connects only when it sends).
    client = Target("127.0.0.1:1", retry=NO_RETRY, protocol="http", form="padded").client()
    requests = [client._request(group, None)["inputs"] for group in groups]

    assert len(requests) == len(images)
    shape = requests[3][0].shape()
    assert shape == [per_request, max(len(images[(3 + i) % 4].data) for i in range(per_request))]


def test_images_per_request_must_be_positive(tmp_path):
    with pytest.raises(BenchError, match="images-per-request"):
        BenchOptions(repository=tmp_path, images_per_request=0)


def test_the_naive_model_declares_the_classifiers_top_k_outputs_only():
    from bls_pipeline import contract
    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.builder.repository import RepositorySpec
    from bls_pipeline.devtools.bench.repository import naive_config

    configs = RepositorySpec(target="local", max_batch_size=4, num_classes=10).configs()

    naive = naive_config(configs[mc.CLASSIFIER], configs[mc.NETWORK])

    assert [output.name for output in naive.output] == [spec.name for spec in contract.CLASSIFIER_OUTPUTS]
    assert contract.PROBABILITIES_OUTPUT in [output.name for output in configs[mc.CLASSIFIER].output]


def test_a_failing_endpoint_is_the_servers_fault_for_the_exit_code():
    from bls_pipeline.cli.common import ExitCode, exit_code_for
    from bls_pipeline.errors import BenchError, EndpointFailure

    assert exit_code_for(EndpointFailure("classifier: a request failed: [500] boom")) == ExitCode.SERVER
    assert isinstance(EndpointFailure("x"), BenchError)
    assert exit_code_for(BenchError("no images to benchmark")) == ExitCode.INPUT


def test_the_served_max_batch_is_the_classifiers_where_the_dali_model_has_none(tmp_path) -> None:
    from bls_pipeline.builder.repository import RepositorySpec

    for name, config in RepositorySpec(target="triton", max_batch_size=8, num_classes=2).configs().items():
        (tmp_path / name).mkdir()
        mc.write_config(tmp_path / name / "config.pbtxt", config)

    assert mc.read_config(tmp_path / mc.PREPROCESSING / "config.pbtxt").max_batch_size == 0
    assert served_max_batch_size(tmp_path) == 8
