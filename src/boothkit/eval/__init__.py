"""Evaluation: world fidelity, and (later) personalisation benchmarks."""
