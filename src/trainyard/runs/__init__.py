"""Across runs: the run table, curves compared, the HTML report, the TensorBoard server, sweeps."""
