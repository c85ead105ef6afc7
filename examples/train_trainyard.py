"""The same default job with trainyard: the whole file is the config.

Adds over train_torch.py: a run folder with the resolved config, TensorBoard (scalars, grouped curves,
histograms, graph, image grids, confusion matrix, hparams) and metrics.jsonl, atomic checkpoints with exact
resume, Ctrl-C safety, early stopping, mixed precision and DDP/pipeline by config switch.

    python examples/train_trainyard.py          # same as: trainyard train
"""

from trainyard.config import load_config
from trainyard.engine.run import train

cfg = load_config(
    None,
    [
        "data.dataset=digits",
        "model.name=cnn",
        "loader.batch_size=64",
        "optim.name=adamw",
        "optim.lr=3e-3",
        "optim.weight_decay=1e-4",
        "schedule.name=cosine",
        "trainer.epochs=30",
    ],
)
final = train(cfg)
print(f"test accuracy {final['test/accuracy']:.4f}")
