"""Pure Flax modules and their builders: PixelCNN++ (pixelcnn.py, with its mixture head in
mixture.py) and the ResNet/VGG classifiers (classifiers.py). No I/O; presets are in pxd.configs."""
