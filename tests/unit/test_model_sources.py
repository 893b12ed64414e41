"""``bls_pipeline.model_sources`` finds the ``model_repository/`` sources and the ``samples/``
photographs in a checkout.

The installed-package case (a wheel in a fresh venv) is ``tests/e2e/test_install.py``.
"""

from __future__ import annotations

from pathlib import Path

from bls_pipeline.builder.repository import TEMPLATE_DIR
from bls_pipeline.builder.user_pipeline import sample_photos
from bls_pipeline.model_sources import model_source, model_sources_dir, samples_dir
from bls_pipeline.runtime.dali import PACKAGED_PIPELINE

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_checkout_reads_the_top_level_model_repository_folder():
    assert model_sources_dir() == REPO_ROOT / "model_repository"
    assert model_source("classifier", "model.py") == REPO_ROOT / "model_repository" / "classifier" / "1" / "model.py"


def test_the_repository_build_and_the_dali_runtime_use_the_one_helper():
    assert TEMPLATE_DIR == model_sources_dir()
    assert PACKAGED_PIPELINE == model_source("preprocessing", "dali.py")
    assert PACKAGED_PIPELINE.is_file()


def test_a_checkout_verifies_conversions_on_the_top_level_samples_folder():
    assert samples_dir() == REPO_ROOT / "samples"
    assert sample_photos() == sorted((REPO_ROOT / "samples").iterdir())
