"""Multi-label targets from real data: three yes/no attributes of each of scikit-learn's 1,797 handwritten
digits. Trained by `trainyard train run.yaml` from this folder."""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

ATTRIBUTES = ("even", "five_or_more", "closed_loop")
CLOSED_LOOP = (0, 6, 8, 9)


def attributes():
    """One Dataset of (image (1, 8, 8), 0/1 vector of the three attributes); split by data.test_fraction/val_fraction."""
    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    digit = torch.as_tensor(raw.target)
    y = torch.stack([digit % 2 == 0, digit >= 5, torch.isin(digit, torch.tensor(CLOSED_LOOP))], dim=1).float()
    return TensorDataset(x, y)


class TinyCNN(nn.Module):
    # num_labels (3: the length of each target vector) and in_channels come from the data
    def __init__(self, in_channels: int, num_labels: int, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
            nn.Flatten(),
            nn.Linear(width * 4 * 4, num_labels),
        )

    def forward(self, x):
        return self.body(x)  # one logit per label; BCEWithLogitsLoss is the task's loss
