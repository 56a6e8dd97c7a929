"""Everything that touches disk: datasets, user images, checkpoints, run dirs, shipped models."""
