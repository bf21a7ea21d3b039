"""Vision plugin: segmentation by latent refinement (see docs/VISION.md).

Import the pieces from their modules (``plugin``, ``model``, ``scenes``, ``evaluate``,
``train``); this package imports nothing heavy on its own.
"""
