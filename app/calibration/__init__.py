"""Calibration of the "same person" threshold on labelled photos: pairs, ROC and operating points, the report, and
the threshold stored per collection and model fingerprint."""

from app.calibration.pairs import LabelledFace, Pairs, build_pairs, read_labels
from app.calibration.roc import OperatingPoint, Roc, bootstrap_interval, equal_error_rate, roc_curve, threshold_at_far
from app.calibration.thresholds import CalibratedThreshold, ThresholdStore

__all__ = [
    "CalibratedThreshold",
    "LabelledFace",
    "OperatingPoint",
    "Pairs",
    "Roc",
    "ThresholdStore",
    "bootstrap_interval",
    "build_pairs",
    "equal_error_rate",
    "read_labels",
    "roc_curve",
    "threshold_at_far",
]
