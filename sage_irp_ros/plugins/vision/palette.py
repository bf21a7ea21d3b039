"""Class colours of the vision plugin: the node's overlay and the demo's pictures share them."""

import numpy as np

# Colour per class id (background, id 0, keeps the camera image in an overlay).
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


#: Mask value of an unknown pixel (an all-unknown mask for a frame flagged unknown).
UNKNOWN_ID = 255
UNKNOWN_COLOUR = np.array([128, 128, 128], np.uint8)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """Blend class colours into ``rgb`` where the mask is not background (grey: unknown)."""
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    colours[mask == UNKNOWN_ID] = UNKNOWN_COLOUR
    out = rgb.astype(np.float32)
    fg = (mask > 0)[..., None]
    out = np.where(fg, (1.0 - alpha) * out + alpha * colours, out)
    return out.clip(0, 255).astype(np.uint8)


def status_frame(img: np.ndarray, confidence: float, unknown: bool) -> np.ndarray:
    """Draw the frame's status on an overlay (a copy).

    A border (green: known, red: unknown) and a white bar along the top whose length is the
    confidence (full width: 1.0).
    """
    out = img.copy()
    h, w = out.shape[:2]
    t = max(1, min(h, w) // 32)
    out[:t], out[-t:], out[:, :t], out[:, -t:] = (
        (np.array([220, 30, 30], np.uint8) if unknown else np.array([40, 200, 60], np.uint8)),
    ) * 4
    n = int(round(np.clip(confidence, 0.0, 1.0) * w))
    out[t:2 * t, :n] = 255
    return out
