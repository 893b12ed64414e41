"""The GPU suites' prebuilt repository (``BLS_TEST_GPU_REPOSITORY``) re-hosted both ways by
:func:`tests.conftest.rehost`, checked here on a CPU build: the plain model names, each
hosting's backends, and a real server classifying through ``classifier``."""

from __future__ import annotations

import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.client import ClassifierClient
from tests.conftest import PHOTOS, encode, rehost, require_native_backends
from tests.e2e._support import hosting_of, start_server

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("source", "hosting"), [("python", "native"), ("native", "python")])
def test_a_built_repository_rehosted_serves_the_classifier_on_the_other_hosting(
    request, source, hosting, tmp_path, photos
):
    require_native_backends()
    built = request.getfixturevalue(f"{source}_repository")

    repository = rehost(built, tmp_path / "repository", hosting)

    assert sorted(path.name for path in repository.iterdir()) == sorted([mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK])
    assert hosting_of(repository) == hosting
    for model in (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK):
        assert mc.read_config(repository / model / "config.pbtxt").name == model
    server = start_server(repository, tmp_path / "tritonserver.log")
    try:
        with ClassifierClient(server.url) as client:
            predictions = client.classify([encode(photos[name], "JPEG", quality=90) for name in PHOTOS], top_k=1)
    finally:
        server.stop()
    assert [p.class_ids[0] for p in predictions] == list(PHOTOS.values())
