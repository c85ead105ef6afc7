"""trainyard: a PyTorch training workbench. One config, tracked runs, one CPU to many GPUs.

``trainyard.fit(model, train, val)`` trains from Python, ``trainyard.load(run_dir)`` gives the model back;
both are imported on first use, so ``import trainyard`` (and the command line) stays quick.
"""

__version__ = "0.1.0"

__all__ = ["fit", "load", "RunResult", "Task", "Callback", "__version__"]


def __getattr__(name: str):
    if name in ("fit", "load", "RunResult"):
        from trainyard.engine import api

        return getattr(api, name)
    if name == "Task":
        from trainyard.tasks import Task

        return Task
    if name == "Callback":
        from trainyard.engine.callbacks import Callback

        return Callback
    raise AttributeError(f"module 'trainyard' has no attribute {name!r}")
