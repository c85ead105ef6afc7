"""A user's regression data and model, trained by `trainyard train run.yaml` from this folder."""

import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import TensorDataset


def patients():
    """scikit-learn's 442 diabetes patients: 10 (already scaled) features, disease progression after a year.
    One Dataset: trainyard holds out data.test_fraction and data.val_fraction of it."""
    x, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()  # standardised target: the loss and the MAE read in standard deviations
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))


class MLP(nn.Module):
    # in_features (10) and num_outputs (1 per target) come from the data and the task
    def __init__(self, in_features: int, num_outputs: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x):
        return self.net(x)  # (batch, 1) for (batch,) targets: the regression task reshapes
