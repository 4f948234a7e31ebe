"""Sampling and free-energy estimation: MBAR (:mod:`workbench.sampling.mbar`)."""

from .mbar import MBARResult, covariance, log_weights, mbar, reweight

__all__ = ["MBARResult", "covariance", "log_weights", "mbar", "reweight"]
