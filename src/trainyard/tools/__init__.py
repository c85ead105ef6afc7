"""Tools around a run: ``trainyard tune-workers`` (and the doctor beside it, in ``trainyard.doctor``)."""
