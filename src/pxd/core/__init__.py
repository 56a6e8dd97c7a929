"""Pure, jittable maths over models: likelihood (bits/dim), losses, training steps and
optimisers, purification, attacks, adaptive (BPDA) attacks, detection metrics. No I/O, no
CLI, no global state; host loops over devices are in pxd.engine."""
