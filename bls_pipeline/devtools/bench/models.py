"""Python-backend models that exist only for the benchmark's comparisons.

- :class:`PostprocessModel` (``classifier_postprocess``): the last step of the
  ``classifier_ensemble`` (preprocessing -> network -> this): softmax, top-k, labels, the
  same functions as the BLS ``classifier``.
- :class:`NaiveClassifierModel` (``classifier_naive``): the TorchServe-style baseline in one
  model: PIL decoding and numpy transforms per image (:mod:`bls_pipeline.devtools.bench.naive`), then the
  same network runtime, then the same postprocessing.

Each ``model.py`` that :mod:`bls_pipeline.devtools.bench.repository` writes is one import of a class
here, like the product's models import :mod:`bls_pipeline.serving.models`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from bls_pipeline.devtools.bench.naive import PilPreprocessor
from bls_pipeline.errors import BlsPipelineError, InvalidImageError
from bls_pipeline.layout import SETTINGS_FILE
from bls_pipeline.request.orchestration import ClassifierSettings
from bls_pipeline.request.postprocess import label_table, load_labels, parse_top_k
from bls_pipeline.serving.bls import error_response
from bls_pipeline.serving.models import (
    _device,
    _gpu_id,
    _input,
    _parameters,
    _version_dir,
    classification_response,
    prepare_images,
    request_top_k,
)

LOGITS_INPUT = "LOGITS"


class PostprocessModel:
    """Logits ``[N, C]`` -> ``SCORES``/``CLASS_IDS``/``LABELS``: the ensemble's last step."""

    def initialize(self, args: dict) -> None:
        """Read the labels named by the ``labels_file`` parameter."""
        parameters = _parameters(json.loads(args["model_config"]))
        self.labels = label_table(load_labels(_version_dir(args) / parameters["labels_file"]))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """One response per request; ``top_k`` as the ``classifier`` reads it."""
        responses = []
        for request in requests:
            try:
                k = parse_top_k(request_top_k(request), len(self.labels))
                responses.append(classification_response(_input(request, LOGITS_INPUT), k, self.labels))
            except BlsPipelineError as exc:
                responses.append(error_response(exc))
        return responses


class NaiveClassifierModel:
    """The whole classifier in one model, the naive way: PIL per image, then the network."""

    def initialize(self, args: dict) -> None:
        """Labels, the PIL preprocessing of ``preprocessing.json`` and the network file."""
        from bls_pipeline.runtime.network import load_network, network_options

        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        version_dir = _version_dir(args)
        self.settings = ClassifierSettings.from_parameters(parameters, max_batch_size=config["max_batch_size"])
        self.labels = label_table(load_labels(version_dir / parameters["labels_file"]))
        self.preprocess = PilPreprocessor.from_file(version_dir / SETTINGS_FILE)
        self.network = load_network(
            version_dir,
            device=_device(args),
            gpu_id=_gpu_id(args),
            max_batch_size=config["max_batch_size"],
            **network_options(parameters),
        )

    def _preprocess_request(self, request: Any) -> tuple[list[np.ndarray], int]:
        prepared = prepare_images(request, self.settings, len(self.labels))
        arrays = []
        for index, image in enumerate(prepared.images):
            try:
                arrays.append(self.preprocess(image))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise InvalidImageError(index, f"cannot be decoded ({exc})") from None
        return arrays, prepared.top_k

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Preprocess every image of every request, run them as one batch, answer each."""
        responses: list[Any] = [None] * len(requests)
        prepared: dict[int, tuple[list[np.ndarray], int]] = {}
        for index, request in enumerate(requests):
            try:
                prepared[index] = self._preprocess_request(request)
            except BlsPipelineError as exc:
                responses[index] = error_response(exc)
        arrays = [array for images, _ in prepared.values() for array in images]
        if arrays:
            logits = self.network(np.stack(arrays))
            offset = 0
            for index, (images, k) in prepared.items():
                own = logits[offset : offset + len(images)]
                offset += len(images)
                responses[index] = classification_response(own, k, self.labels)
        return responses
