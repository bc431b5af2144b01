"""Evaluation: evaluate, the capability panel, compare, sweep, tune."""
