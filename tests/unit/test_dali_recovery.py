"""The in-process DALI preprocessing recovers from a decoder failure (real DALI, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from bls_pipeline.devtools.soak import corrupt_png_data
from bls_pipeline.runtime.dali import DaliPreprocessor, release_free_memory
from tests.conftest import encode


def png() -> bytes:
    return encode(skdata.chelsea(), "PNG")


@pytest.fixture(scope="module")
def preprocessor() -> DaliPreprocessor:
    return DaliPreprocessor.from_file(max_batch_size=4)


def test_after_a_decoder_failure_the_rebuilt_pipeline_gives_the_same_output(preprocessor):
    good = np.frombuffer(png(), np.uint8)
    before = preprocessor([good])

    for _ in range(3):
        with pytest.raises(RuntimeError, match="decoders.image"):
            preprocessor([good, np.frombuffer(corrupt_png_data(png()), np.uint8)])

    np.testing.assert_array_equal(preprocessor([good, good]), np.concatenate([before, before]))


def test_giving_free_memory_back_is_safe_to_call_any_time():
    release_free_memory()
    release_free_memory()
