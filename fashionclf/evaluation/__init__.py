"""Evaluation: metrics, calibration, error analysis, robustness, paired tests."""
