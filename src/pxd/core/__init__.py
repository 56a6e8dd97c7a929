"""Pure, jittable maths over models: likelihood (bits/dim), losses, training steps and
optimisers, purification, feature squeezing, attacks (a package, one module per family),
adaptive (BPDA) attacks, detection metrics. No I/O, no CLI, no global state; host loops over
devices (sharding, batches shrunk to their active examples) are in pxd.engine."""
