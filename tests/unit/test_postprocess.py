"""Specification of ``bls_pipeline.request.postprocess``: softmax, top-k, ``top_k`` parsing, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.errors import ConfigError, InvalidRequestError
from bls_pipeline.request.postprocess import (
    imagenet_labels,
    load_labels,
    map_labels,
    parse_top_k,
    softmax,
    top_k,
)


def _softmax_float64(logits: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "logits",
    [
        np.array([[1.0, 2.0, 3.0]], dtype=np.float32),
        np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=np.float32),
        np.array([[-1e30, -1e30, -1e30]], dtype=np.float32),
        np.array([[3e38, -3e38, 0.0]], dtype=np.float32),
        np.array([[1e300, 0.0]], dtype=np.float64),
        np.array([[1.7e308, -1.7e308]], dtype=np.float64),
        np.random.default_rng(0).normal(0, 8, size=(4, 1000)).astype(np.float16),
        np.random.default_rng(1).normal(0, 8, size=(16, 1000)).astype(np.float32),
    ],
    ids=[
        "small",
        "huge-opposite",
        "all-very-negative",
        "float32-extremes",
        "float64-huge",
        "float64-extremes",
        "float16",
        "imagenet-sized",
    ],
)
def test_softmax_is_finite_sums_to_one_and_matches_float64(logits: np.ndarray) -> None:
    probs = softmax(logits)
    assert probs.dtype == np.float32 and probs.shape == logits.shape
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, _softmax_float64(logits), rtol=1e-5, atol=1e-7)


def test_softmax_of_opposite_huge_logits_is_one_hot() -> None:
    np.testing.assert_array_equal(softmax(np.array([1e4, -1e4], dtype=np.float32)), [1.0, 0.0])


def test_softmax_follows_the_axis_argument() -> None:
    logits = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(softmax(logits, axis=0), softmax(logits.T).T, rtol=1e-6)


@pytest.mark.parametrize(
    ("probs", "k", "scores", "ids"),
    [
        ([[0.1, 0.6, 0.3]], 1, [[0.6]], [[1]]),
        ([[0.1, 0.6, 0.3]], 3, [[0.6, 0.3, 0.1]], [[1, 2, 0]]),
        ([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], 2, [[0.6, 0.3], [0.5, 0.3]], [[1, 2], [0, 2]]),
        # Ties are ordered by lower class id, inside the top k and at its boundary.
        ([[0.2, 0.4, 0.4]], 2, [[0.4, 0.4]], [[1, 2]]),
        ([[0.25, 0.25, 0.25, 0.25]], 2, [[0.25, 0.25]], [[0, 1]]),
        ([[0.1, 0.3, 0.3, 0.3]], 2, [[0.3, 0.3]], [[1, 2]]),
        ([[0.0] * 7 + [1.0]], 3, [[1.0, 0.0, 0.0]], [[7, 0, 1]]),
    ],
    ids=["k1", "k-equals-classes", "two-rows", "tie-inside", "all-tied", "tie-at-boundary", "tied-zeros"],
)
def test_top_k_sorts_descending_and_breaks_ties_by_lower_class_id(
    probs: list[list[float]], k: int, scores: list[list[float]], ids: list[list[int]]
) -> None:
    got_scores, got_ids = top_k(np.array(probs, dtype=np.float32), k)
    assert got_scores.dtype == np.float32 and got_ids.dtype == np.int64
    np.testing.assert_allclose(got_scores, scores)
    np.testing.assert_array_equal(got_ids, ids)


def test_top_k_agrees_with_a_full_stable_sort_on_quantized_scores() -> None:
    # Coarse values make many ties, the case where argpartition alone is not deterministic.
    probs = np.random.default_rng(3).integers(0, 20, size=(64, 1000)).astype(np.float32)
    scores, ids = top_k(probs, 5)
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(probs, expected, axis=1))


@pytest.mark.parametrize("k", [0, -1, 4, True, 2.0, "2"], ids=repr)
def test_top_k_rejects_k_outside_one_to_num_classes(k: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"top_k must be an integer in 1\.\.3"):
        top_k(np.ones((1, 3), dtype=np.float32), k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 5),
        (1, 1),
        (5, 5),
        (1000, 1000),
        (np.int64(7), 7),
        ("3", 3),
        ("1000", 1000),
        ("007", 7),
    ],
    ids=repr,
)
def test_parse_top_k_accepts_ints_and_digit_strings(value: object, expected: int) -> None:
    assert parse_top_k(value, num_classes=1000) == expected
    assert type(parse_top_k(value, num_classes=1000)) is int


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0"),
        (-3, "-3"),
        (1001, "1001"),
        (True, "True"),
        (False, "False"),
        (5.0, "5.0"),
        ("", "''"),
        ("five", "'five'"),
        ("-3", "'-3'"),
        ("2.5", "'2.5'"),
        (" 5", "' 5'"),
        ("1001", "'1001'"),
        ("\u0665", "'\u0665'"),  # a non-ASCII digit that int() would accept
        ("9" * 5000, "'" + "9" * 5000 + "'"),
        ([5], "[5]"),
    ],
    ids=lambda value: repr(value)[:20],
)
def test_parse_top_k_rejects_everything_else_naming_the_value(value: object, shown: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_top_k(value, num_classes=1000)
    assert str(raised.value) == f"top_k must be an integer in 1..1000, got {shown}"


def test_parse_top_k_default_beyond_the_classes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="default top_k 5"):
        parse_top_k(None, num_classes=3)


@pytest.mark.parametrize(
    ("index", "label"),
    [(0, "tench"), (285, "Egyptian cat"), (657, "missile"), (967, "espresso"), (999, "toilet tissue")],
)
def test_imagenet_labels_are_torchvisions_in_class_order(index: int, label: str) -> None:
    assert imagenet_labels()[index] == label


def test_imagenet_labels_are_1000_distinct_names() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert load_labels() == labels


def test_imagenet_labels_cannot_be_mutated_by_a_caller() -> None:
    imagenet_labels()[0] = "changed"
    assert imagenet_labels()[0] == "tench"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat\ndog\n", ["cat", "dog"]),
        ("cat\ndog", ["cat", "dog"]),
        ("  cat \r\ndog\t\r\n", ["cat", "dog"]),
        ("Egyptian cat\ncafé\n", ["Egyptian cat", "café"]),
    ],
    ids=["trailing-newline", "no-trailing-newline", "crlf-and-spaces", "utf8"],
)
def test_load_labels_reads_one_stripped_label_per_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(text.encode("utf-8"))
    assert load_labels(path) == expected
    assert load_labels(str(path)) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"cat\n\ndog\n", "line 2 is blank"),
        (b"cat\n   \ndog\n", "line 2 is blank"),
        (b"cat\ndog\n\n", "line 3 is blank"),
        (b"\ncat\n", "line 1 is blank"),
        (b"caf\xe9\n", "cannot read labels file"),
    ],
    ids=["empty", "blank-middle", "whitespace-only", "blank-at-end", "blank-first", "latin-1"],
)
def test_load_labels_rejects_bad_files_naming_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_labels(path)


def test_load_labels_reports_a_missing_file_as_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read labels file .*missing.txt"):
        load_labels(tmp_path / "missing.txt")


def test_map_labels_gives_utf8_bytes_shaped_like_the_ids() -> None:
    names = map_labels(np.array([[2, 0], [1, 1]], dtype=np.int64), ["cat", "dog", "café"])
    assert names.dtype == object and names.shape == (2, 2)
    assert names.tolist() == [["café".encode(), b"cat"], [b"dog", b"dog"]]


def test_map_labels_of_top_k_ids_names_imagenet_classes() -> None:
    probs = np.zeros((1, 1000), dtype=np.float32)
    probs[0, [285, 967]] = [0.7, 0.3]
    _, ids = top_k(probs, 2)
    assert map_labels(ids, imagenet_labels()).tolist() == [[b"Egyptian cat", b"espresso"]]


@pytest.mark.parametrize("bad_id", [3, 1000, -1], ids=repr)
def test_map_labels_rejects_ids_without_a_label_as_config_error(bad_id: int) -> None:
    with pytest.raises(ConfigError, match=f"class id {bad_id} has no label: 3 labels"):
        map_labels(np.array([[0, bad_id]]), ["a", "b", "c"])
