"""lmsprint.training: one training run (the Trainer and its parts)."""
