"""Pure, jittable maths: no I/O, no CLI, no global state."""
