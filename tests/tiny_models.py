"""Small models and data shared by the tests: fast on CPU, yet with the layer types that matter (Conv, BN, Linear)."""

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyConvNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Conv -> pool -> Linear: BatchNorm makes eval mode matter for the Fisher."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def trained_bn_stats(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, as a trained model has."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(images + 0.5)
    model.eval()
    return model


class DictDataset(Dataset):
    """`{"pixel_values", "labels"}` items, the format of the library's transformed datasets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def random_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
