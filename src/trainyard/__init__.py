"""trainyard: a PyTorch training workbench. One config, tracked runs, one CPU to many GPUs."""

__version__ = "0.1.0"
