"""Process-wide decoder limits, set before OpenCV is imported anywhere (app/__init__.py imports this first)."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- process limits
# OpenCV has its own pixel cap, OPENCV_IO_MAX_IMAGE_PIXELS (default 2**30), checked against what *its* parser
# reads. It is a second line behind our header check: if OpenCV's parser ever reads a bigger size than ours,
# it refuses instead of allocating. OpenCV reads the variable once, when cv2 is imported (measured with
# opencv-python 5.0.0: setting it after `import cv2` and before the first imdecode has no effect), so it is set
# here, before the import below, from MAX_MEGAPIXELS: the same environment variable Settings read. That only
# works when this module is the first to import cv2 in the process (app/__init__.py should import it first);
# otherwise OPENCV_MAX_PIXELS reports what OpenCV kept, and the header check alone stands.
OPENCV_MAX_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # Settings.max_megapixels' default


def pixel_limit_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """The pixel cap the service is configured with (MAX_MEGAPIXELS, any case, as Settings read it), known before
    Settings exist. A missing or malformed value gives the default: Settings will reject it anyway."""
    raw = next((value for key, value in environ.items() if key.upper() == "MAX_MEGAPIXELS"), "")
    try:
        megapixels = float(raw)
    except ValueError:
        return DEFAULT_MAX_PIXELS
    return int(megapixels * 1e6) if math.isfinite(megapixels) and megapixels > 0 else DEFAULT_MAX_PIXELS


def _opencv_limit_at_import() -> int:
    default = 1 << 30  # OpenCV's built-in value
    if "cv2" not in sys.modules:
        os.environ.setdefault(OPENCV_MAX_PIXELS_ENV, str(pixel_limit_from_env()))
    elif OPENCV_MAX_PIXELS_ENV not in os.environ:
        return default  # imported before us without the variable: OpenCV kept its default
    try:
        return max(1, int(os.environ[OPENCV_MAX_PIXELS_ENV]))
    except ValueError:
        return default


OPENCV_MAX_PIXELS: int = _opencv_limit_at_import()

import cv2  # noqa: E402, F401  (after OPENCV_IO_MAX_IMAGE_PIXELS is set: OpenCV reads it at import)
from PIL import Image  # noqa: E402

# Pillow's own bomb guard (a warning over the limit, an error over twice the limit) is a second line too: our
# check runs first with the real limit and its own message. configure_pixel_limits() keeps it in step.
Image.MAX_IMAGE_PIXELS = pixel_limit_from_env()


def configure_pixel_limits(max_pixels: int) -> None:
    """Make the process-wide decoder limits follow the configured pixel cap (call once at start-up, with
    Settings.max_megapixels * 1e6). Pillow's can change at any time; OpenCV's was fixed at import, so a cap above
    it only routes those images through Pillow (see _decode_displayed), and a mismatch is logged."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    if OPENCV_MAX_PIXELS != max_pixels:
        level = logging.WARNING if OPENCV_MAX_PIXELS < max_pixels else logging.INFO
        logger.log(
            level,
            "OpenCV's pixel limit is %d, the configured limit %d: set MAX_MEGAPIXELS (or %s) in "
            "the environment before the service starts so that they agree",
            OPENCV_MAX_PIXELS,
            max_pixels,
            OPENCV_MAX_PIXELS_ENV,
        )
