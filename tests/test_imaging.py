"""Decoding real photos in every accepted format, and refusing what is not acceptable."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from app.errors import BadImage, ImageTooLarge, UnsupportedImage
from app.imaging import ImageFormat, crop_thumbnail, decode_image, read_image_file, sniff_format

MB = 2**20
LIMITS = {"max_bytes": 20 * MB, "max_pixels": 50_000_000}


def pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:  # type: ignore[no-untyped-def]
    return Image.open(photos.yaoming).convert("RGB")


@pytest.mark.parametrize(("fmt", "expected", "kwargs"), [
    ("JPEG", ImageFormat.JPEG, {}),
    ("PNG", ImageFormat.PNG, {}),
    ("WEBP", ImageFormat.WEBP, {"quality": 90}),
    ("BMP", ImageFormat.BMP, {}),
    ("TIFF", ImageFormat.TIFF, {}),
    ("GIF", ImageFormat.GIF, {}),
])
def test_each_format_decodes_to_bgr(photo: Image.Image, fmt: str, expected: ImageFormat,
                                    kwargs: dict[str, object]) -> None:
    data = pil_bytes(photo, fmt, **kwargs)
    decoded = decode_image(data, **LIMITS)
    assert decoded.format is expected
    assert decoded.pixels.shape == (photo.height, photo.width, 3)
    assert decoded.pixels.dtype == np.uint8
    # Colour order is BGR: compare the mean of each channel with the RGB source.
    rgb_means = np.asarray(photo, dtype=np.float32).reshape(-1, 3).mean(0)
    bgr_means = decoded.pixels.reshape(-1, 3).mean(0).astype(np.float32)
    tolerance = 12 if fmt == "GIF" else 3  # GIF is palette-quantised
    assert np.allclose(bgr_means[::-1], rgb_means, atol=tolerance)


def test_grey_16bit_cmyk_and_alpha_become_bgr(photo: Image.Image) -> None:
    grey = decode_image(pil_bytes(photo.convert("L"), "PNG"), **LIMITS)
    assert grey.pixels.shape[2] == 3
    arr16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    sixteen = decode_image(pil_bytes(Image.fromarray(arr16), "PNG"), **LIMITS)
    assert sixteen.pixels.dtype == np.uint8 and sixteen.pixels.shape[2] == 3
    assert abs(float(sixteen.pixels.mean()) - float(np.asarray(photo.convert("L")).mean())) < 3
    cmyk = decode_image(pil_bytes(photo.convert("CMYK"), "JPEG"), **LIMITS)
    assert cmyk.pixels.shape == (photo.height, photo.width, 3)
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited onto white
    alpha = decode_image(pil_bytes(rgba, "PNG"), **LIMITS)
    assert alpha.pixels.shape[2] == 3 and alpha.pixels.min() == 255


def test_gif_first_frame(photo: Image.Image) -> None:
    frames = [photo, Image.new("RGB", photo.size, (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue(), **LIMITS)
    assert decoded.pixels[..., 2].mean() < 200  # not the all-red second frame


def test_exif_orientation_is_applied(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = pil_bytes(photo, "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, **LIMITS)
    assert decoded.pixels.shape[:2] == (photo.width, photo.height)
    assert decoded.original_size == (photo.height, photo.width)


def test_large_jpeg_is_decoded_reduced_with_scale(photo: Image.Image) -> None:
    big = photo.resize((4400, 3000))
    decoded = decode_image(pil_bytes(big, "JPEG"), **LIMITS)
    # the largest libjpeg reduction that keeps the long side >= 640 (the detector's input)
    assert decoded.factor == 4 and decoded.scale == pytest.approx(4.0, rel=0.01)
    assert decoded.pixels.shape[:2] == (750, 1100)
    assert decoded.original_size == big.size
    assert decoded.decode_at(2).shape[1] == 2200 and decoded.decode_at(1).shape[1] == 4400
    small = decode_image(pil_bytes(photo, "JPEG"), **LIMITS)
    assert small.factor == 1 and small.encoded is None and small.decode_at(1) is small.pixels


def test_refusals_name_the_problem(photo: Image.Image) -> None:
    with pytest.raises(UnsupportedImage, match="not an image"):
        decode_image(b"%PDF-1.7 not an image at all", **LIMITS)
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"", **LIMITS)
    jpeg = pil_bytes(photo, "JPEG")
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode_image(jpeg[:40], **LIMITS)
    with pytest.raises(ImageTooLarge, match="MB limit"):
        decode_image(jpeg, max_bytes=1000, max_pixels=LIMITS["max_pixels"])


def test_decompression_bomb_refused_before_decoding() -> None:
    # 12000 x 5000 = 60 MP of one colour compresses to a few KB.
    bomb = pil_bytes(Image.new("L", (12000, 5000), 0), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match="megapixel"):
        decode_image(bomb, **LIMITS)


def test_sniff_ignores_the_extension(tmp_path: Path, photo: Image.Image) -> None:
    path = tmp_path / "really_webp.jpg"
    path.write_bytes(pil_bytes(photo, "WEBP"))
    assert sniff_format(path.read_bytes()) is ImageFormat.WEBP
    assert read_image_file(path, **LIMITS).format is ImageFormat.WEBP


def test_thumbnail_near_border_is_square() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    thumb = crop_thumbnail(image, (0, 0, 30, 40), size=64)
    assert thumb.shape == (64, 64, 3)
    assert cv2.countNonZero(cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY)) > 0
