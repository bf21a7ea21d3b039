"""Class colours of the vision plugin: the node's overlay and the demo's pictures share them."""

import numpy as np

# Colour per class id (background, id 0, keeps the camera image in an overlay).
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """Blend class colours into ``rgb`` where the mask is not background."""
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    out = rgb.astype(np.float32)
    fg = (mask > 0)[..., None]
    out = np.where(fg, (1.0 - alpha) * out + alpha * colours, out)
    return out.clip(0, 255).astype(np.uint8)
