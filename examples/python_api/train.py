"""trainyard from Python: a model and data of your own, trainyard.fit(), then trainyard.load() and a prediction.

python train.py                                   # runs/<timestamp>/ in this folder
python train.py trainer.epochs=5 track.root=/tmp/runs   # any config override, as on the command line
"""

import sys

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

import trainyard

# --- data: 569 tumours, 30 measurements each, malignant (0) or benign (1) ----------------------
x, y = load_breast_cancer(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
mean, std = x_train.mean(0), x_train.std(0)  # standardise with the training split's statistics


def dataset(x, y):
    return TensorDataset(torch.as_tensor((x - mean) / std, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))


train, test = dataset(x_train, y_train), dataset(x_test, y_test)  # val: held out of train (data.val_fraction)


# --- model: one logit per sample, as task="binary" takes ---------------------------------------
class Classifier(nn.Module):
    def __init__(self, in_features: int = 30, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)


# --- train: the same run a config gives (run folder, TensorBoard, checkpoints, resume) -----------
if __name__ == "__main__":
    result = trainyard.fit(
        Classifier(),
        train,
        test=test,
        task="binary",  # BCEWithLogitsLoss; accuracy and f1; monitor val/accuracy
        optimizer="AdamW",
        scheduler="OneCycleLR",  # torch names; lr and weight_decay from optim.*
        config=["optim.lr=0.01", "trainer.epochs=15", "loader.batch_size=32", *sys.argv[1:]],  # or a dict {"optim.lr": 0.01}
    )
    print({k: round(v, 4) for k, v in result.metrics.items() if k.startswith("test/")})
    print("run folder:", result.run_dir)

    model = trainyard.load(result.run_dir)  # rebuilt and loaded with the best checkpoint's weights, in eval mode
    with torch.no_grad():
        p_benign = model(test.tensors[0][:5]).sigmoid().squeeze(1)
    print("P(benign) of 5 test tumours:", [round(p, 3) for p in p_benign.tolist()], "true:", test.tensors[1][:5].int().tolist())
