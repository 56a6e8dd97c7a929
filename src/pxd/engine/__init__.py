"""Host-side loops over devices: mesh and batching, one batched helper per job, the loops that
shrink a batch to its active examples (active.py), the trainer."""
