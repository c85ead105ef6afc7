"""A user's own CNN and MNIST loader, trained by `trainyard train run.yaml` from this folder."""

from torch import nn
from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST


class SmallCNN(nn.Module):
    # in_channels and num_classes come from the data (the constructor names them); width from model.args
    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 7 * 7, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def mnist(root: str):
    """{"train", "test", "classes"} from the raw MNIST files under root/MNIST/raw (nothing downloads)."""

    def split(train: bool) -> TensorDataset:
        ds = MNIST(root=root, train=train, download=False)
        x = ds.data.unsqueeze(1).float().div(255).sub(0.1307).div(0.3081)  # (N, 1, 28, 28), normalised
        return TensorDataset(x, ds.targets)

    return {"train": split(True), "test": split(False), "classes": [str(d) for d in range(10)]}
