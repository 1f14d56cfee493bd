"""ResNet bottleneck stages in torchvision's layout (He et al., "Deep Residual Learning", CVPR 2016; v1.5: the
stride sits on the 3x3 convolution).

Parameter names follow torchvision (and timm's ``resnet50.tv_in1k``): ``conv1``/``bn1`` for the stem,
``layerN.i.{conv1,bn1,conv2,bn2,conv3,bn3}`` and ``layerN.0.downsample.{0,1}`` for a projection shortcut. Methods
that change a stage (stride, width, dilation) build it with ``make_layer`` and keep those names, so a state dict
from torchvision/timm loads into the stages that are unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

# torchvision's ResNet-50: (blocks, width, output channels, stride) of layer1..layer4.
RESNET50_STAGES = ((3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2))
STEM_CHANNELS = 64


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1, each followed by BatchNorm, plus the shortcut, then ReLU.

    The shortcut is a 1x1 projection + BatchNorm (``downsample``) when the stride is not 1 or the channel count
    changes, else the identity (torchvision's rule).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, *, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


def make_layer(
    in_channels: int, width: int, out_channels: int, blocks: int, *, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """A stage of ``blocks`` bottlenecks; only the first one strides and may project the shortcut."""
    layers = [Bottleneck(in_channels, width, out_channels, stride=stride, dilation=dilation)]
    layers += [Bottleneck(out_channels, width, out_channels, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def stem_layers() -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]:
    """torchvision's stem: 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max-pool (stride 4 in all).

    Returned as four modules so a network assigns them to ``conv1, bn1, relu, maxpool`` at the top level of its
    state dict, as torchvision's ResNet does.
    """
    return (
        nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(STEM_CHANNELS),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
