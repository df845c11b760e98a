"""Bytes -> validated BGR ndarray, and thumbnails.

Formats are recognised by their signature (not the file name or the declared content type). Dimensions and the
EXIF orientation are parsed from the header bytes here, with `struct`, before any decoder sees the data: a
decoder (or Pillow's `getexif()` on a PNG) may allocate the whole image first, which is exactly what a
decompression bomb needs. Decoded images are reduced at once (big JPEGs by libjpeg itself, other formats by an
area resize) so that no full-size array outlives the decode.
"""

from app.imaging.limits import (  # first: sets OpenCV's pixel limit before cv2 is imported
    OPENCV_MAX_PIXELS,
    configure_pixel_limits,
    pixel_limit_from_env,
)

# isort: split
from app.imaging.decode import (
    DecodedImage,
    PixelGate,
    crop_thumbnail,
    decode_image,
    encode_jpeg,
    read_image_bytes,
    read_image_file,
)
from app.imaging.header import (
    IMAGE_EXTENSIONS,
    MIN_DECODE_LONG_SIDE,
    ImageFormat,
    ImageHeader,
    checked_header,
    decoded_pixels,
    decoded_pixels_estimate,
    read_header,
    sniff_format,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_DECODE_LONG_SIDE",
    "OPENCV_MAX_PIXELS",
    "DecodedImage",
    "ImageFormat",
    "ImageHeader",
    "PixelGate",
    "checked_header",
    "configure_pixel_limits",
    "crop_thumbnail",
    "decode_image",
    "decoded_pixels",
    "decoded_pixels_estimate",
    "encode_jpeg",
    "pixel_limit_from_env",
    "read_header",
    "read_image_bytes",
    "read_image_file",
    "sniff_format",
]
