"""A small CNN for [C, H, W] images, registered with regularity under the entry-point group `regularity.models`.

A factory takes (input_shape, num_classes) and returns a freshly initialised nn.Module mapping `[B, *input_shape]` to
logits `[B, num_classes]`; regularity seeds torch's generator before calling it, so initialise from that generator.

- `tiny_cnn` is an nn.Sequential of layers regularity's stacked path knows (Conv2d, ReLU, MaxPool2d, Flatten,
  Linear): K copies train as grouped convolutions and batched matmuls.
- `tiny_cnn_module` is the same network as a plain nn.Module with its own forward: K copies train through
  torch.func.vmap, the fallback for any module. Same seed, same initial weights as `tiny_cnn`.
"""
from __future__ import annotations

from torch import nn


def _layers(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> list[nn.Module]:
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks (`width`, then 2 x `width` channels), then a linear classifier."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ValueError(f"tiny_cnn takes [C, H, W] images of at least 4x4; got examples of shape {list(input_shape)}")
    channels, height, width_px = input_shape
    return [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (height // 4) * (width_px // 4), num_classes)]


def tiny_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The CNN as an nn.Sequential: regularity trains K copies on its stacked path."""
    return nn.Sequential(*_layers(input_shape, num_classes))


class TinyCNN(nn.Module):
    """The same CNN with its own forward: regularity trains K copies through torch.func.vmap."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        *features, flatten, classifier = _layers(input_shape, num_classes)
        self.features, self.flatten, self.classifier = nn.Sequential(*features), flatten, classifier

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def tiny_cnn_module(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The CNN as a plain nn.Module."""
    return TinyCNN(input_shape, num_classes)
