"""lmsprint.evals: downstream benchmarks (lm-evaluation-harness) on exported models."""
