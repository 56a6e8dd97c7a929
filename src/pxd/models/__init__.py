"""Pure Flax modules and their builders: PixelCNN++ (pixelcnn.py, with its mixture head in
mixture.py) and the ResNet/VGG classifiers (classifiers.py). No I/O; presets are in pxd.configs."""

import jax
import jax.numpy as jnp


def init_key(key: jax.Array) -> jax.Array:
    """The key that parameter initialisation uses, derived from `key`: an 'rbg' key, because
    XLA:CPU compiles threefry's bits once per parameter (~0.5 s each, 15 s for the smoke
    PixelCNN) and RngBitGenerator's in about 2 s for a whole network."""
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
