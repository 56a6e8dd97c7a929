"""Typed, frozen configs: strict helpers, datasets, model presets, one config per command."""
