"""Specification of ``bls_pipeline.networks.checkpoints``: safe, strict loading of real checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from bls_pipeline.devtools.bench.naive import PilPreprocessor
from bls_pipeline.errors import CheckpointError, ConfigError
from bls_pipeline.networks.checkpoints import (
    ARCHITECTURES,
    ArchSpec,
    default_checkpoint_path,
    detect_layout,
    get_arch,
    load_checkpoint,
    num_classes,
)
from bls_pipeline.networks.preprocessing import IMAGENET_MEAN, PreprocessingSettings
from tests.conftest import encode

ARCH_NAMES = sorted(ARCHITECTURES)
# Small inputs keep the forward passes cheap on a two-core machine; the layouts do not care.
PROBE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _randomise(model: nn.Module) -> nn.Module:
    """Give every parameter and batch-norm statistic a distinct value, so that a load that
    silently skipped a tensor would change the output."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def reference_models() -> dict[str, nn.Module]:
    """One randomised model per architecture, built once for the module."""
    return {name: _randomise(ARCHITECTURES[name].builder(1000)) for name in ARCH_NAMES}


def _outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(PROBE)


WRAPPERS: dict[str, Callable[[dict[str, torch.Tensor]], object]] = {
    "bare state dict": lambda state: state,
    "module. prefix": lambda state: {f"module.{key}": value for key, value in state.items()},
    "state_dict wrapper": lambda state: {"state_dict": state, "epoch": 90, "arch": "b0"},
    "model wrapper": lambda state: {"model": state},
    "model_state_dict wrapper with prefix": lambda state: {
        "model_state_dict": {f"module.{key}": value for key, value in state.items()},
        "optimizer": {"lr": 0.1},
    },
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_saved_state_dict_loads_back_with_identical_outputs(
    reference_models: dict[str, nn.Module], tmp_path: Path, arch: str, wrapper: str
) -> None:
    reference = reference_models[arch]
    path = tmp_path / "checkpoint.pth"
    torch.save(WRAPPERS[wrapper](reference.state_dict()), path)

    loaded = load_checkpoint(path, arch)

    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(reference))


def test_dle_checkpoint_with_ngc_stage_names_loads(reference_models: dict[str, nn.Module], tmp_path: Path) -> None:
    reference = reference_models["efficientnet-b0"]
    ngc_style = {
        (f"layer{int(key.split('.')[1]) + 1}." + key.split(".", 2)[2]) if key.startswith("layers.") else key: value
        for key, value in reference.state_dict().items()
    }
    assert "layer1.block0.depsep.conv.weight" in ngc_style
    path = tmp_path / "nvidia_efficientnet-b0.pth"
    torch.save({"state_dict": ngc_style}, path)

    assert torch.equal(_outputs(load_checkpoint(path, "efficientnet-b0")), _outputs(reference))


def test_torchvision_alias_names_the_same_architecture() -> None:
    assert get_arch("efficientnet_b0") is ARCHITECTURES["torchvision-efficientnet_b0"]


def test_unknown_architecture_is_refused_with_the_known_names() -> None:
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet50'.*efficientnet-lite0"):
        get_arch("resnet50")


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_custom_class_count_is_read_from_the_classifier(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "ten_classes.pth"
    torch.save(ARCHITECTURES[arch].builder(10).state_dict(), path)

    model = load_checkpoint(path, arch)

    assert num_classes(model) == 10
    assert _outputs(model).shape == (2, 10)


@pytest.mark.parametrize(("saved_as", "loaded_as"), list(permutations(ARCH_NAMES, 2)))
def test_wrong_architecture_names_the_layout_the_keys_look_like(
    reference_models: dict[str, nn.Module], tmp_path: Path, saved_as: str, loaded_as: str
) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save(reference_models[saved_as].state_dict(), path)

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, loaded_as)

    message = str(caught.value)
    assert f"does not match architecture {loaded_as!r}" in message
    assert f"look like the {saved_as} layout" in message


def test_detect_layout_recognises_each_architecture(reference_models: dict[str, nn.Module]) -> None:
    detected = {name: detect_layout(model.state_dict()) for name, model in reference_models.items()}
    assert detected == {name: name for name in ARCH_NAMES}
    assert detect_layout(["conv1.weight", "fc.weight"]) is None


def test_renamed_keys_are_listed_as_missing_and_unexpected(
    reference_models: dict[str, nn.Module], tmp_path: Path
) -> None:
    state = dict(reference_models["efficientnet-b0"].state_dict())
    state["features.conv.renamed"] = state.pop("features.conv.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)

    with pytest.raises(
        CheckpointError,
        match=r"1 missing keys \(features\.conv\.weight\).*"
        r"1 unexpected keys \(features\.conv\.renamed\)",
    ):
        load_checkpoint(path, "efficientnet-b0")


def test_wrong_tensor_shape_is_named(reference_models: dict[str, nn.Module], tmp_path: Path) -> None:
    state = dict(reference_models["efficientnet-b0"].state_dict())
    state["stem.conv.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)

    expected = r"stem\.conv\.weight \(16, 3, 3, 3\) != \(32, 3, 3, 3\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, "efficientnet-b0")


def test_checkpoint_without_batchnorm_counters_still_loads(
    reference_models: dict[str, nn.Module], tmp_path: Path
) -> None:
    # Older PyTorch versions saved no num_batches_tracked; inference does not need them.
    reference = reference_models["torchvision-efficientnet_b0"]
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)

    loaded = load_checkpoint(path, "torchvision-efficientnet_b0")
    assert torch.equal(_outputs(loaded), _outputs(reference))


class _WritesMarkerWhenUnpickled:
    """A malicious payload: unpickling it calls ``open(marker, "w")``, creating the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"weight": _WritesMarkerWhenUnpickled(marker)}}, path)

    with pytest.raises(CheckpointError, match="refusing to load .*not a weights-only checkpoint"):
        load_checkpoint(path, "efficientnet-lite0")

    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Linear(2, 2), path)

    with pytest.raises(CheckpointError, match="not a weights-only checkpoint.*state_dict"):
        load_checkpoint(path, "efficientnet-lite0")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "checkpoint not found"),
        (b"not a checkpoint at all", "refusing to load"),
        ({"epoch": 3, "best_acc": 0.7}, "no state dict found.*'epoch'"),
        ([1, 2, 3], "expected a state dict, got list"),
    ],
    ids=["missing file", "garbage bytes", "wrapper without weights", "not a mapping"],
)
def test_unusable_files_give_a_clear_error(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "checkpoint.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)

    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path, "efficientnet-lite0")


def test_arch_spec_validates_its_preprocessing() -> None:
    with pytest.raises(ConfigError, match="at most resize_shorter"):
        ArchSpec("x", nn.Identity, "a", "b", PreprocessingSettings(resize_shorter=256, crop=300))


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_architecture_has_its_preprocessing(name: str) -> None:
    settings = get_arch(name).preprocessing

    assert isinstance(settings, PreprocessingSettings)
    assert (settings.resize_shorter, settings.crop) == (256, 224)


# --- the shipped EfficientNet-Lite0 weights -----------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return load_checkpoint(default_checkpoint_path(), "efficientnet-lite0")


def _preprocess(image: np.ndarray, settings: PreprocessingSettings) -> torch.Tensor:
    """Resize the shorter side, centre-crop and normalize, as the DALI pipeline does, with
    PIL (the benchmark's naive preprocessing), from a lossless PNG of ``image``."""
    return torch.from_numpy(PilPreprocessor(settings)(encode(image, "PNG"))).unsqueeze(0)


@pytest.mark.parametrize(
    ("photo", "class_id", "top_k"),
    [
        ("coffee", 967, 1),  # espresso
        ("rocket", 657, 1),  # missile
        # Chelsea is a tabby: Egyptian cat (285) and tiger cat (282) share the top. Through
        # DALI (linear) 285 wins, but PIL's bilinear on skimage's PNG gives 282 0.383 vs 285
        # 0.370 (and on samples/chelsea.jpg 285 by 0.373 vs 0.371), so only the top two
        # are specified.
        ("chelsea", 285, 2),
    ],
)
def test_shipped_lite0_classifies_real_photographs(lite0: nn.Module, photo: str, class_id: int, top_k: int) -> None:
    image = _preprocess(getattr(skdata, photo)(), get_arch("efficientnet-lite0").preprocessing)

    with torch.no_grad():
        top = lite0(image).softmax(dim=1).topk(top_k).indices[0].tolist()

    assert class_id in top


def test_lite0_normalization_matches_the_statistics_its_weights_were_trained_with(
    lite0: nn.Module,
) -> None:
    # The stem convolution is linear, so over the training set its mean output is the
    # convolution of the mean normalized pixel; batch norm recorded that as running_mean.
    # With per-channel ImageNet statistics the mean input would be 0 and so would the
    # running means; they are not, and the TF-Lite normalization predicts them.
    settings = get_arch("efficientnet-lite0").preprocessing
    stem, stem_bn = lite0._conv_stem, lite0._bn0  # type: ignore[union-attr]
    mean_input = (torch.tensor(IMAGENET_MEAN) - torch.tensor(settings.mean)) / torch.tensor(settings.std)
    predicted = (stem.weight.detach().sum(dim=(2, 3)) * mean_input).sum(dim=1)
    actual = stem_bn.running_mean

    correlation = float(np.corrcoef(predicted.numpy(), actual.numpy())[0, 1])
    residual = float((actual - predicted).pow(2).mean().sqrt() / actual.pow(2).mean().sqrt())
    assert correlation > 0.9
    assert residual < 0.6
