"""The default job written by hand in plain PyTorch: the code trainyard removes.

A small CNN on scikit-learn's bundled handwritten digits (8x8), light augmentation, AdamW with a
per-step cosine schedule, 30 epochs, validation each epoch, the best epoch's weights tested at the end.
No tracking, no checkpoints on disk, no resume, no config, one device.

    python examples/train_torch.py
"""

import random

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

EPOCHS, BATCH, LR, WEIGHT_DECAY, SEED = 30, 64, 3e-3, 1e-4, 0

random.seed(SEED)
np.random.seed(SEED)
torch.manual_seed(SEED)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

digits = load_digits()
images = torch.from_numpy(digits.images).float().mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
labels = torch.from_numpy(digits.target).long()
idx = np.arange(len(labels))
rest, test_idx = train_test_split(idx, test_size=0.2, stratify=labels, random_state=0)
train_idx, val_idx = train_test_split(rest, test_size=0.1, stratify=labels[rest], random_state=1)
mean, std = (images[train_idx].float() / 255).mean().item(), (images[train_idx].float() / 255).std().item()

to_input = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])]
train_tf = v2.Compose([v2.RandomAffine(degrees=10, translate=(0.125, 0.125)), *to_input])
eval_tf = v2.Compose(to_input)


class Digits(Dataset):
    def __init__(self, indices, transform):
        self.indices, self.transform = indices, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        return self.transform(images[j]), int(labels[j])


train_loader = DataLoader(Digits(train_idx, train_tf), batch_size=BATCH, shuffle=True)
val_loader = DataLoader(Digits(val_idx, eval_tf), batch_size=2 * BATCH)
test_loader = DataLoader(Digits(test_idx, eval_tf), batch_size=2 * BATCH)


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))


model = nn.Sequential(block(1, 32), block(32, 64), nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64 * 2 * 2, 10))).to(
    device
)
optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(train_loader))
loss_fn = nn.CrossEntropyLoss()


@torch.inference_mode()
def accuracy(loader):
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


best_acc, best_state = -1.0, None
for epoch in range(EPOCHS):
    model.train()
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
    val_acc = accuracy(val_loader)
    print(f"epoch {epoch + 1}/{EPOCHS}  loss {loss.item():.4f}  val accuracy {val_acc:.4f}")
    if val_acc > best_acc:
        best_acc, best_state = val_acc, {k: v.clone() for k, v in model.state_dict().items()}

model.load_state_dict(best_state)
print(f"test accuracy {accuracy(test_loader):.4f}")
