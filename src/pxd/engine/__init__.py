"""Host-side loops over devices: mesh and batching, one batched helper per job, the trainer."""
