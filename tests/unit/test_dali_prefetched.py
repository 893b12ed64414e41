"""The prefetching DALI runner (the benchmark's pipelined in-process limit) gives, batch by
batch and in order, what the serial runner gives: for a ``dali.py`` and for a serialized
``model.dali`` (real DALI, CPU)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from bls_pipeline.layout import SERIALIZED_FILE
from bls_pipeline.runtime.dali import PACKAGED_PIPELINE, DaliPreprocessor, load_pipeline_module, pipeline_from_settings
from tests.conftest import encode

PICTURES = (skdata.chelsea, skdata.astronaut, skdata.coffee, skdata.rocket, skdata.hubble_deep_field)


def _batches() -> list[list[np.ndarray]]:
    rows = [np.frombuffer(encode(picture(), "JPEG", quality=90), np.uint8) for picture in PICTURES]
    return [rows[0:2], rows[2:3], rows[3:5]]  # batch sizes differ: each output must be its own batch's


def _serialized(directory: Path) -> Path:
    module = load_pipeline_module(PACKAGED_PIPELINE)
    settings = module.load_settings(PACKAGED_PIPELINE.parent)
    pipe = pipeline_from_settings(
        module, {**settings, "decoder_device": "cpu"}, max_batch_size=4, num_threads=2, device_id=None
    )
    pipe.serialize(filename=str(directory / SERIALIZED_FILE))
    return directory


@pytest.fixture(params=["dali.py", "model.dali"])
def runner(request, tmp_path) -> DaliPreprocessor:
    if request.param == "dali.py":
        return DaliPreprocessor.from_file(max_batch_size=4)
    return DaliPreprocessor.from_version_dir(_serialized(tmp_path), on_device=False, max_batch_size=4)


def test_prefetched_batches_equal_the_serial_ones_in_order(runner):
    batches = _batches()
    expected = [runner(batch).copy() for batch in batches]

    runs = runner.prefetched(batches, depth=2)
    # Twice round the batches: the ones fed ahead come back in the order they were fed.
    got = [images.copy() for images in islice(runs, 2 * len(batches))]
    runs.close()

    assert [images.shape[0] for images in got] == [2, 1, 2, 2, 1, 2]
    for index, images in enumerate(got):
        np.testing.assert_array_equal(images, expected[index % len(batches)])
    # The runner's own (serial) pipeline is untouched.
    np.testing.assert_array_equal(runner(batches[0]), expected[0])


def test_prefetched_refuses_batches_over_the_maximum(runner):
    rows = [row for batch in _batches() for row in batch]

    with pytest.raises(ValueError, match="at most 4 images"):
        runner.prefetched([rows])


def test_prefetched_outputs_run_the_first_batch_before_cycling_through_the_others():
    from bls_pipeline.runtime.dali import prefetched_outputs

    module = load_pipeline_module(PACKAGED_PIPELINE)
    settings = module.load_settings(PACKAGED_PIPELINE.parent)
    pipe = pipeline_from_settings(
        module,
        {**settings, "decoder_device": "cpu"},
        max_batch_size=4,
        num_threads=2,
        device_id=None,
        prefetch_queue_depth=2,
    )
    pipe.build()
    batches = _batches()
    first = [row for batch in batches[:2] for row in batch]  # 3 images, run before the others

    runs = prefetched_outputs(pipe, module.INPUT_NAME, batches, 2, first=first)
    sizes = [output.as_tensor().shape()[0] for output in islice(runs, 5)]
    runs.close()

    assert sizes == [3, 2, 1, 2, 2]
