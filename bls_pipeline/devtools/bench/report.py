"""What a benchmark run leaves behind: the table, the chart, the JSON, perf_analyzer's input.

Example::

    print(format_table(result))
    write_json(result, Path("bench.json"))
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bls_pipeline import contract
from bls_pipeline.devtools.bench.images import BenchImage
from bls_pipeline.devtools.bench.run import STAGE_LABELS


def _fmt(spread: Mapping[str, float], digits: int = 1) -> str:
    return f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"


def format_table(result: Mapping[str, Any]) -> str:
    """The human-readable report: in-process stages (serial and pipelined, each with its CPU
    per image), endpoints by concurrency, the in-process limit, ratios and targets."""
    lines = []
    machine = result["machine"]
    lines.append(
        f"machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), python {machine['python']}, "
        f"repeats {result['config']['repeats']} (median [min-max])"
    )
    lines.append("")
    in_process = result["in_process"]
    lines.append(f"{'in process (no server)':34s} {'batch':>5s}  {'images/s':>22s}")
    stages = (
        ("preprocessing", "1. DALI preprocessing"),
        ("network", "2. network"),
        ("inprocess", f"3a. {STAGE_LABELS['inprocess']}"),
        ("pipelined", f"3b. {STAGE_LABELS['pipelined']}"),
    )
    for stage, label in stages:
        for name, spread in in_process.get(stage, {}).items():
            lines.append(f"{label:34s} {name.removeprefix('batch_'):>5s}  {_fmt(spread):>22s}")
        if stage == "inprocess" and "single_image_ms" in in_process:
            lines.append(f"{'   one image, latency (ms)':34s} {'1':>5s}  {_fmt(in_process['single_image_ms'], 2):>22s}")
        for name, spread in in_process.get(f"{stage}_cpu_ms_per_image", {}).items():
            lines.append(f"{'   CPU per image (ms)':34s} {name.removeprefix('batch_'):>5s}  {_fmt(spread, 2):>22s}")
    limit = result.get("in_process_limit")
    if limit:
        name = "pipelined" if limit["stage"] == "pipelined" else STAGE_LABELS[limit["stage"]]
        lines.append(
            f"in-process limit: {name}, {limit['images_per_s']:.1f} images/s at {limit['at'].replace('_', ' ')} "
            f"(serial {result['images_per_s']['inprocess']:.1f}); the *_vs_inprocess ratios divide by it"
        )
        if "pipelined_absent" in limit:
            lines.append(f"   no pipelined figure: {limit['pipelined_absent']}")
    lines.append("")
    labels = {
        "bls": "4. classifier (BLS)",
        "ensemble": "5. ensemble",
        "naive": "6. naive (PIL)",
        "bls_native": "7a. classifier, native",
        "ensemble_native": "7b. ensemble, native",
    }
    # Results written before the bytes form existed sent padded rows.
    form = result["config"].get("request_form", "padded")
    lines.append(f"endpoints over HTTP, {result['config']['images_per_request']} image(s) per request, {form} form")
    lines.append(
        f"{'endpoint over HTTP':22s} {'conc':>4s}  {'images/s':>22s}  {'p50 ms':>22s}  {'p90 ms':>8s}  {'p99 ms':>8s}  {'CPU ms/img':>10s}"
    )
    for key, by_concurrency in result["endpoints"].items():
        for row in by_concurrency.values():
            latency = row["latency_ms"]
            cpu = row.get("server_cpu_ms_per_image")
            lines.append(
                f"{labels.get(key, key):22s} {row['concurrency']:>4d}  {_fmt(row['images_per_s']):>22s}  "
                f"{_fmt(latency['p50']):>22s}  {latency['p90']['median']:8.1f}  {latency['p99']['median']:8.1f}  "
                f"{cpu['median'] if cpu else float('nan'):10.2f}" + ("  slow" if row.get("slow") else "")
            )
    lines.append("")
    best_at = result.get("best_at", {})
    for key, value in result["images_per_s"].items():
        lines.append(f"best images/s {key:14s} {value:8.1f}  {('at ' + best_at[key]) if key in best_at else ''}")
    targets = result.get("targets", {})
    for name, value in result.get("ratios", {}).items():
        if name not in targets:
            lines.append(f"{name:18s} {value:8.3f}  (no target)")
    for name, check in targets.items():
        lines.append(
            f"{name:18s} {check['value']:8.3f}  target {check['target']:40s} {'met' if check['met'] else 'NOT MET'}"
        )
    return "\n".join(lines)


def plot_result(result: Mapping[str, Any], path: Path) -> Path:
    """A PNG: throughput and latency (p50, p99) against concurrency, with the in-process limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {
        "bls": "tab:blue",
        "ensemble": "tab:orange",
        "naive": "tab:green",
        "bls_native": "tab:purple",
        "ensemble_native": "tab:brown",
    }
    for key, by_concurrency in result["endpoints"].items():
        rows = sorted(by_concurrency.values(), key=lambda row: row["concurrency"])
        x = [row["concurrency"] for row in rows]
        ips = [row["images_per_s"] for row in rows]
        throughput.errorbar(
            x,
            [s["median"] for s in ips],
            yerr=[[s["median"] - s["min"] for s in ips], [s["max"] - s["median"] for s in ips]],
            marker="o",
            capsize=3,
            label=key,
            color=colors.get(key),
        )
        latency.plot(
            x,
            [row["latency_ms"]["p50"]["median"] for row in rows],
            marker="o",
            color=colors.get(key),
            label=f"{key} p50",
        )
        latency.plot(
            x,
            [row["latency_ms"]["p99"]["median"] for row in rows],
            linestyle="--",
            color=colors.get(key),
            label=f"{key} p99",
        )
    # Results written before the pipelined figure existed compared with the serial one.
    limit = result.get("in_process_limit", {"stage": "inprocess"})["stage"]
    for stage, style in (("pipelined", ":"), ("inprocess", "-.")):
        value = result["images_per_s"].get(stage)
        if value:
            label = "in-process limit" if stage == limit else "in process"
            throughput.axhline(value, color="black", linestyle=style, label=f"{label} ({STAGE_LABELS[stage]})")
    single = result["latency_ms"].get("inprocess_single")
    if single:
        latency.axhline(single, color="black", linestyle=":", label="in-process, one image")
    for axis, title, unit in ((throughput, "throughput", "images/s"), (latency, "latency", "ms")):
        axis.set_xscale("log", base=2)
        per_request = result["config"]["images_per_request"]
        axis.set_xlabel(f"concurrency (requests in flight, {per_request} image{'s' if per_request > 1 else ''} each)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    machine = result["machine"]
    figure.suptitle(f"classifier benchmark: {machine['cpu_count']} CPUs, {machine['cpu_model']}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def perf_analyzer_data(
    images: Sequence[BenchImage], input_name: str = contract.IMAGE_INPUT, *, unbatched: bool = False
) -> dict[str, Any]:
    """perf_analyzer ``--input-data`` JSON: each photograph one request, bytes base64-encoded.

    One image per request needs no padding, so none is sent: each row is exactly the file
    (its own ``shape``), and the server's dynamic ragged batching forms the batches. A
    64-image zero-padded request of ImageNet-sized photos carries 20-39 MB for 7 MB of JPEG.
    ``input_name`` is the classifier's ``IMAGE`` unless the preprocessing model is loaded
    alone (``DALI_INPUT``). ``unbatched``: for a model of ``max_batch_size: 0`` (the built
    DALI model), whose input shape holds the batch, so each row is ``[1, bytes]``.
    """
    lead = [1] if unbatched else []
    return {
        "data": [
            {input_name: {"b64": base64.b64encode(image.data).decode("ascii"), "shape": [*lead, len(image.data)]}}
            for image in images
        ]
    }


def perf_analyzer_command(data_file: str, url: str = "127.0.0.1:8000", model: str = contract.CLASSIFIER) -> str:
    """The perf_analyzer command line that loads ``model`` with the photographs, one per request."""
    return (
        f"perf_analyzer -m {model} -u {url} -i http --input-data {data_file} -b 1 "
        "--concurrency-range 1:16:2 --measurement-interval 5000 --stability-percentage 10 "
        "--percentile 50 -f perf_classifier.csv"
    )


def write_json(result: Mapping[str, Any], path: Path) -> Path:
    """Write ``result`` as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path
