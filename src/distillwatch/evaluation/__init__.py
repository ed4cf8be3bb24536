"""Evaluation harness: detectors scored against simulated ground truth (`bench detect`)."""
