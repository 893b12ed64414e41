"""From the network's logits to what a client reads: probabilities, top-k classes, labels.

Example::

    probs = softmax(logits)                                   # float32 [N, 1000]
    k = parse_top_k(request_parameters.get("top_k"), probs.shape[1])
    scores, class_ids = top_k(probs, k)                       # float32 / int64 [N, k]
    names = map_labels(class_ids, imagenet_labels())          # object (bytes) [N, k]
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np

from bls_pipeline.errors import ConfigError, InvalidRequestError

__all__ = [
    "imagenet_labels",
    "load_labels",
    "map_labels",
    "parse_top_k",
    "softmax",
    "top_k",
]

_IMAGENET_LABELS_RESOURCE = "data/imagenet1k_labels.txt"


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return the softmax of ``logits`` along ``axis`` as float32.

    Subtracting the maximum first keeps ``exp`` from overflowing, so any finite logits
    (``[1e4, -1e4]``, float16 from an FP16 engine, float64) give finite probabilities.
    Infinite or NaN logits are the network's bug and give NaN.
    """
    # float64 holds every float16/float32 logit and their differences exactly enough; the
    # cost is negligible next to the network for [N, 1000].
    values = np.asarray(logits, dtype=np.float64)
    # A difference beyond float64's range (only from float64 input) becomes -inf, whose exp
    # is the right answer, 0; the overflow warning would only be noise.
    with np.errstate(over="ignore"):
        shifted = values - values.max(axis=axis, keepdims=True)
    exps = np.exp(shifted)
    return (exps / exps.sum(axis=axis, keepdims=True)).astype(np.float32)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``k`` highest scores (float32 ``[N, k]``) and their class ids (int64).

    Scores are sorted highest first; equal scores are ordered by lower class id, also at the
    ``k``-th place, so results do not depend on the partition algorithm. Raises
    :class:`InvalidRequestError` unless ``1 <= k <= C`` for ``probs`` of shape ``[N, C]``.
    """
    if probs.ndim != 2:
        raise ValueError(f"top_k expects probabilities of shape [N, C], got {probs.shape}")
    num_classes = probs.shape[1]
    if not _is_valid_top_k(k, num_classes):
        raise InvalidRequestError(f"top_k must be an integer in 1..{num_classes}, got {k!r}")
    negated = -probs
    candidates = np.argpartition(negated, k - 1, axis=1)[:, :k]
    # Sorting ids first makes the stable sort by score break ties by lower class id.
    candidates.sort(axis=1)
    order = np.argsort(np.take_along_axis(negated, candidates, axis=1), axis=1, kind="stable")
    class_ids = np.take_along_axis(candidates, order, axis=1)
    # argpartition picks arbitrarily among scores tied at the k-th place; those rows are
    # rare, so they are redone with a full stable sort rather than complicating the fast path.
    kth_scores = np.take_along_axis(probs, class_ids[:, -1:], axis=1)
    tied = np.count_nonzero(probs >= kth_scores, axis=1) > k
    if tied.any():
        class_ids[tied] = np.argsort(negated[tied], axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(probs, class_ids, axis=1)
    return scores.astype(np.float32, copy=False), class_ids.astype(np.int64, copy=False)


def parse_top_k(value: object, num_classes: int, default: int = 5) -> int:
    """Validate the ``top_k`` request parameter and return it as an int.

    ``None`` (parameter absent) gives ``default``. Triton delivers parameters as int, str or
    bool, so an int or a string of ASCII digits is accepted; bools, floats, other strings and
    values outside ``1..num_classes`` raise :class:`InvalidRequestError`. A ``default``
    outside that range is a :class:`ConfigError` of the deployment, not of the request.
    """
    if value is None:
        if not 1 <= default <= num_classes:
            raise ConfigError(f"default top_k {default} is not in 1..{num_classes}")
        return default
    # Longer digit strings are out of range anyway; the cap keeps int() cheap and bounded.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        k: object = int(value)
    else:
        k = value
    if not _is_valid_top_k(k, num_classes):
        raise InvalidRequestError(f"top_k must be an integer in 1..{num_classes}, got {value!r}")
    return int(k)  # type: ignore[call-overload]  # _is_valid_top_k proved it is an int


def _is_valid_top_k(k: object, num_classes: int) -> bool:
    """Whether ``k`` is an int in ``1..num_classes``; bools are not ints here."""
    # bool is an int subclass, but top_k=true is a client mistake, not 1.
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        return False
    return bool(1 <= k <= num_classes)


def load_labels(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Read class labels, one per line in class-id order; ``None`` gives ImageNet-1k's.

    Lines are stripped of surrounding whitespace. A blank line (a missing label would shift
    every later class) or an empty file raises :class:`ConfigError` naming the line; so does
    a file that cannot be read or is not UTF-8.
    """
    if path is None:
        return imagenet_labels()
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read labels file {os.fspath(path)}: {error}") from error
    return _parse_labels(text, os.fspath(path))


def imagenet_labels() -> list[str]:
    """Return the 1000 ImageNet-1k class names shipped with the package (torchvision's names)."""
    return list(_imagenet_labels())


@functools.lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    """Read the packaged ImageNet-1k labels once; a tuple so that callers cannot mutate it."""
    text = resources.files("bls_pipeline").joinpath(_IMAGENET_LABELS_RESOURCE).read_text("utf-8")
    return tuple(_parse_labels(text, _IMAGENET_LABELS_RESOURCE))


def _parse_labels(text: str, source: str) -> list[str]:
    """Split a labels file into stripped labels; blank lines and empty files are errors."""
    labels = [line.strip() for line in text.splitlines()]
    if not labels:
        raise ConfigError(f"labels file {source} is empty")
    for number, label in enumerate(labels, start=1):
        if not label:
            raise ConfigError(f"labels file {source}: line {number} is blank")
    return labels


def label_table(labels: Sequence[str]) -> np.ndarray:
    """The labels as the object array of UTF-8 ``bytes`` that Triton's ``TYPE_STRING`` takes.

    Build it once per model: encoding 1,000 labels per request cost the classifier about
    0.2 ms an image (measured on 63-image batches).
    """
    table = np.empty(len(labels), dtype=object)
    table[:] = [label.encode("utf-8") for label in labels]
    return table


def map_labels(class_ids: np.ndarray, labels: Sequence[str] | np.ndarray) -> np.ndarray:
    """Return the UTF-8 label of each class id, as an object array of bytes shaped like ids.

    ``labels`` is a :func:`label_table` (or the label strings, encoded on each call). The ids
    come from :func:`top_k` over the network's classes, so an id without a label means the
    labels do not match the model: a :class:`ConfigError` of the deployment rather than a bad
    request.
    """
    ids = np.asarray(class_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= len(labels)):
        bad = int(ids.max()) if ids.max() >= len(labels) else int(ids.min())
        raise ConfigError(f"class id {bad} has no label: {len(labels)} labels do not match the model's classes")
    table = labels if isinstance(labels, np.ndarray) else label_table(labels)
    return table[ids]
