"""PyTorch definitions of the networks whose checkpoints ``bls_pipeline`` loads.

Each builder returns a freshly initialised ``nn.Module`` whose ``state_dict`` keys and
shapes are exactly those of the checkpoints it must load:

- :func:`efficientnet_lite0`: ``efficientnet-lite-pytorch`` (keys ``_conv_stem.*``,
  ``_blocks.N.*``, ``_fc.*``), used as is.
- :func:`dle_efficientnet_b0`: NVIDIA DeepLearningExamples' ConvNets EfficientNet-B0
  (keys ``stem.*``, ``layers.N.blockM.*``, ``features.*``, ``classifier.fc.*``).
- :func:`torchvision_efficientnet_b0`: torchvision's ``efficientnet_b0`` (keys
  ``features.N...``, ``classifier.1.*``).

Only inference matters here: dropout and stochastic depth are identities in eval mode, so
they are left out, and the initialisation is PyTorch's default (weights come from the
checkpoint).

Example::

    model = dle_efficientnet_b0(num_classes=1000).eval()
    logits = model(torch.zeros(1, 3, 224, 224))
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn


class _Stage(NamedTuple):
    """One stage of EfficientNet-B0 (Table 1 of the paper)."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


B0_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 32, 16, 1),
    _Stage(6, 3, 2, 16, 24, 2),
    _Stage(6, 5, 2, 24, 40, 2),
    _Stage(6, 3, 2, 40, 80, 3),
    _Stage(6, 5, 1, 80, 112, 3),
    _Stage(6, 5, 2, 112, 192, 4),
    _Stage(6, 3, 1, 192, 320, 1),
)
B0_STEM_CHANNELS = 32
B0_HEAD_CHANNELS = 1280


def _stage_blocks(stage: _Stage) -> list[tuple[int, int, int]]:
    """``(in_channels, out_channels, stride)`` of each block: only the first one strides."""
    blocks = [(stage.in_channels, stage.out_channels, stage.stride)]
    blocks += [(stage.out_channels, stage.out_channels, 1)] * (stage.repeats - 1)
    return blocks


def efficientnet_lite0(num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    """EfficientNet-Lite0 from ``efficientnet-lite-pytorch`` (ReLU6, no squeeze-excitation).

    ``image_size`` fixes its TensorFlow-style "SAME" padding, which that package computes
    once for a static input size (static padding is what keeps it exportable to ONNX).
    """
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=image_size)


# --- NVIDIA DeepLearningExamples layout -------------------------------------------------

# DLE trains with TensorFlow's batch-norm settings rather than PyTorch's defaults.
_DLE_BN_EPS = 1e-3
_DLE_BN_MOMENTUM = 0.01


def _dle_conv_bn(
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
    activation_name: str = "act",
) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [
        (
            "conv",
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel,
                stride=stride,
                padding=(kernel - 1) // 2,
                groups=groups,
                bias=False,
            ),
        ),
        ("bn", nn.BatchNorm2d(out_channels, eps=_DLE_BN_EPS, momentum=_DLE_BN_MOMENTUM)),
    ]
    if activation:
        layers.append((activation_name, nn.SiLU()))
    return nn.Sequential(OrderedDict(layers))


class _DleSqueezeExcitation(nn.Module):
    """Channel attention; keys ``squeeze.*`` and ``expand.*`` (1x1 convolutions with bias)."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.squeeze = nn.Conv2d(channels, squeezed, 1)
        self.activation = nn.SiLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(self.activation(self.squeeze(self.pooling(x))))
        return x * torch.sigmoid(scale)


class _DleMBConv(nn.Module):
    """Inverted residual block; keys ``expand``, ``depsep``, ``se``, ``proj``."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.residual = stride == 1 and in_channels == out_channels
        # DLE's original_mbconv has no expansion module at all when the ratio is 1.
        self.expand = _dle_conv_bn(in_channels, hidden, 1) if hidden != in_channels else None
        self.depsep = _dle_conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden)
        # The squeeze width derives from the block input, not the expanded width.
        self.se = _DleSqueezeExcitation(hidden, max(1, int(in_channels * 0.25)))
        self.proj = _dle_conv_bn(hidden, out_channels, 1, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.proj(self.se(self.depsep(out)))
        return out + x if self.residual else out


class DleEfficientNet(nn.Module):
    """EfficientNet-B0 with the module tree of NVIDIA DeepLearningExamples (ConvNets)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = _dle_conv_bn(3, B0_STEM_CHANNELS, 3, stride=2, activation_name="activation")
        layers = []
        for stage in B0_STAGES:
            blocks = OrderedDict(
                (f"block{index}", _DleMBConv(cin, cout, stage.expand_ratio, stage.kernel, s))
                for index, (cin, cout, s) in enumerate(_stage_blocks(stage))
            )
            layers.append(nn.Sequential(blocks))
        self.layers = nn.Sequential(*layers)
        self.features = _dle_conv_bn(B0_STAGES[-1].out_channels, B0_HEAD_CHANNELS, 1, activation_name="activation")
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("pooling", nn.AdaptiveAvgPool2d(1)),
                    ("squeeze", nn.Flatten()),
                    ("fc", nn.Linear(B0_HEAD_CHANNELS, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.layers(self.stem(x))))


def dle_efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-B0 in the NVIDIA DeepLearningExamples checkpoint layout."""
    return DleEfficientNet(num_classes)


# --- torchvision layout -----------------------------------------------------------------


def _tv_conv_bn(
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
) -> nn.Sequential:
    # torchvision's Conv2dNormActivation: an index-keyed Sequential (0 conv, 1 bn, 2 act);
    # EfficientNet-B0 keeps PyTorch's batch-norm defaults (eps 1e-5).
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=(kernel - 1) // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if activation:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class _TvSqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation``: keys ``fc1.*`` and ``fc2.*``."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.activation = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * torch.sigmoid(scale)


class _TvMBConv(nn.Module):
    """torchvision's ``MBConv``: everything under an index-keyed ``block`` Sequential."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(_tv_conv_bn(in_channels, hidden, 1))
        layers.append(_tv_conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden))
        layers.append(_TvSqueezeExcitation(hidden, max(1, in_channels // 4)))
        layers.append(_tv_conv_bn(hidden, out_channels, 1, activation=False))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        # Stochastic depth would sit here; it is the identity at inference.
        return out + x if self.use_res_connect else out


class TorchvisionEfficientNet(nn.Module):
    """EfficientNet-B0 with the module tree of ``torchvision.models.efficientnet_b0``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [_tv_conv_bn(3, B0_STEM_CHANNELS, 3, stride=2)]
        for stage in B0_STAGES:
            features.append(
                nn.Sequential(
                    *(
                        _TvMBConv(cin, cout, stage.expand_ratio, stage.kernel, s)
                        for cin, cout, s in _stage_blocks(stage)
                    )
                )
            )
        features.append(_tv_conv_bn(B0_STAGES[-1].out_channels, B0_HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # Index 0 is torchvision's Dropout: kept so that the Linear stays at key "classifier.1".
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(B0_HEAD_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torchvision_efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-B0 in torchvision's checkpoint layout."""
    return TorchvisionEfficientNet(num_classes)
