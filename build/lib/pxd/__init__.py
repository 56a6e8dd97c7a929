"""pxd: PixelDefend (Song et al., ICLR 2018) in JAX."""

__version__ = "0.1.0"
