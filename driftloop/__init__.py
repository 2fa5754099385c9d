"""driftloop: keep a deployed model healthy as the world drifts."""

__version__ = "0.1.0"
