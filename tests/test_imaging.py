"""Decoding real photos in every accepted format, and refusing what is not acceptable."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from app.errors import BadImage, ImageTooLarge, UnsupportedImage
from app.imaging import (
    ImageFormat,
    configure_pixel_limits,
    crop_thumbnail,
    decode_image,
    decoded_pixels_estimate,
    read_header,
    read_image_bytes,
    sniff_format,
)

MB = 2**20
LIMITS = {"max_bytes": 20 * MB, "max_pixels": 50_000_000}


def pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:  # type: ignore[no-untyped-def]
    return Image.open(photos.yaoming).convert("RGB")


@pytest.mark.parametrize(
    ("fmt", "expected", "kwargs"),
    [
        ("JPEG", ImageFormat.JPEG, {}),
        ("PNG", ImageFormat.PNG, {}),
        ("WEBP", ImageFormat.WEBP, {"quality": 90}),
        ("BMP", ImageFormat.BMP, {}),
        ("TIFF", ImageFormat.TIFF, {}),
        ("GIF", ImageFormat.GIF, {}),
    ],
)
def test_each_format_decodes_to_bgr(
    photo: Image.Image, fmt: str, expected: ImageFormat, kwargs: dict[str, object]
) -> None:
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
    arr16 = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
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


def exif_with(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def bgr(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def test_exif_orientation_is_applied(photo: Image.Image) -> None:
    data = pil_bytes(photo, "JPEG", exif=exif_with(6))  # rotate 90 degrees clockwise on display
    decoded = decode_image(data, **LIMITS)
    assert decoded.pixels.shape[:2] == (photo.width, photo.height)
    assert decoded.original_size == (photo.height, photo.width)
    # The pixels themselves are turned, not only the dimensions.
    turned = np.rot90(bgr(photo), k=-1).astype(np.float32)
    assert float(np.abs(decoded.pixels.astype(np.float32) - turned).mean()) < 4


def half_transparent(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.full((image.height, image.width), 255, np.uint8)
    alpha[:, : image.width // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


# Every kind of file the header parser must agree with Pillow on: (name, format, builder).
HEADER_CASES = {
    "jpeg": lambda p: pil_bytes(p, "JPEG"),
    "jpeg_progressive": lambda p: pil_bytes(p, "JPEG", progressive=True),
    "jpeg_exif_6": lambda p: pil_bytes(p, "JPEG", exif=exif_with(6)),
    "jpeg_grey": lambda p: pil_bytes(p.convert("L"), "JPEG"),
    "jpeg_cmyk": lambda p: pil_bytes(p.convert("CMYK"), "JPEG"),
    "png": lambda p: pil_bytes(p, "PNG"),
    "png_rgba": lambda p: pil_bytes(p.convert("RGBA"), "PNG"),
    "png_palette": lambda p: pil_bytes(p.convert("P"), "PNG"),
    "png_palette_transparency": lambda p: pil_bytes(p.convert("P"), "PNG", transparency=0),
    "png_16bit": lambda p: pil_bytes(Image.fromarray(np.asarray(p.convert("L"), np.uint16) * 257), "PNG"),
    "png_exif_8": lambda p: pil_bytes(p, "PNG", exif=exif_with(8)),
    "webp_lossy": lambda p: pil_bytes(p, "WEBP", quality=80),
    "webp_lossless": lambda p: pil_bytes(p, "WEBP", lossless=True),
    "webp_alpha": lambda p: pil_bytes(half_transparent(p), "WEBP"),
    "webp_exif_6": lambda p: pil_bytes(p, "WEBP", exif=exif_with(6)),
    "bmp": lambda p: pil_bytes(p, "BMP"),
    "bmp_palette": lambda p: pil_bytes(p.convert("P"), "BMP"),
    "tiff": lambda p: pil_bytes(p, "TIFF"),
    "tiff_deflate": lambda p: pil_bytes(p, "TIFF", compression="tiff_adobe_deflate"),
    "tiff_exif_6": lambda p: pil_bytes(p, "TIFF", exif=exif_with(6)),
    "gif": lambda p: pil_bytes(p, "GIF"),
    "gif_animated": lambda p: pil_bytes(p, "GIF", save_all=True, append_images=[p.rotate(180)]),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_header_agrees_with_pillow(photo: Image.Image, case: str) -> None:
    data = HEADER_CASES[case](photo)
    header = read_header(data)
    with Image.open(io.BytesIO(data)) as opened:
        stored = (header.width, header.height)
        if header.format is ImageFormat.TIFF:  # recent Pillow reports a TIFF's size as displayed
            assert opened.size in (stored, header.display_size)
        else:
            assert opened.size == stored
        assert header.orientation == int(opened.getexif().get(0x0112, 1))
        opened.load()
        assert header.has_alpha == (opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info)
    assert header.format.value in case
    assert header.progressive == (case == "jpeg_progressive")
    # decode_image gives the displayed size and pixels of the right shape for every case
    decoded = decode_image(data, **LIMITS)
    assert decoded.original_size == header.display_size
    assert decoded.pixels.shape == (header.display_size[1], header.display_size[0], 3)


def test_big_endian_exif_in_jpeg(photo: Image.Image) -> None:
    # A hand-made Motorola-order EXIF block (Pillow writes Intel order): IFD0 holds one SHORT, orientation 8.
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 8, 0) + struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    plain = pil_bytes(photo, "JPEG")
    data = plain[:2] + app1 + plain[2:]
    assert read_header(data).orientation == 8
    decoded = decode_image(data, **LIMITS)
    expected = np.rot90(decode_image(plain, **LIMITS).pixels, k=1)  # 8: turned 90 degrees anticlockwise
    assert np.array_equal(decoded.pixels, expected)


@pytest.mark.parametrize(
    ("fmt", "kwargs", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 4.0),
        ("PNG", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("TIFF", {}, 0.0),
    ],
)
@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])
def test_orientation_turns_the_pixels(
    photo: Image.Image, fmt: str, kwargs: dict[str, object], tolerance: float, orientation: int, turns: int
) -> None:
    data = pil_bytes(photo, fmt, exif=exif_with(orientation), **kwargs)
    decoded = decode_image(data, **LIMITS)
    expected = np.rot90(bgr(photo), k=turns)
    assert decoded.pixels.shape == expected.shape
    assert decoded.original_size == (photo.height, photo.width)
    assert float(np.abs(decoded.pixels.astype(np.float32) - expected).mean()) <= tolerance


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(photo: Image.Image, orientation: int) -> None:
    data = pil_bytes(photo, "PNG", exif=exif_with(orientation))
    with Image.open(io.BytesIO(data)) as opened:
        expected = bgr(ImageOps.exif_transpose(opened))
    assert np.array_equal(decode_image(data, **LIMITS).pixels, expected)


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("PNG", {"compress_level": 1}),
        ("WEBP", {"quality": 90, "method": 0}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_every_format_is_reduced_early_and_decodes_finer(
    photo: Image.Image, fmt: str, kwargs: dict[str, object]
) -> None:
    big = photo.resize((2600, 1800))
    data = pil_bytes(big, fmt, **kwargs)
    decoded = decode_image(data, **LIMITS)
    # the same power-of-two reduction libjpeg would use: the long side stays >= 640
    assert decoded.factor == 4 and decoded.pixels.shape == (450, 650, 3)
    assert decoded.scale == pytest.approx(4.0) and decoded.original_size == (2600, 1800)
    assert decoded.encoded == data
    assert decoded.decode_at(2).shape == (900, 1300, 3)
    full = decoded.decode_at(1)
    with Image.open(io.BytesIO(data)) as opened:
        reference = bgr(opened)
    assert full.shape == reference.shape
    assert float(np.abs(full.astype(np.float32) - reference).mean()) < 1.0
    reduced = cv2.resize(reference, (650, 450), interpolation=cv2.INTER_AREA)
    assert float(np.abs(decoded.pixels.astype(np.float32) - reduced).mean()) < 2.0


def test_large_transparent_png_is_reduced_onto_white(photo: Image.Image) -> None:
    big = photo.resize((2600, 1800))
    decoded = decode_image(pil_bytes(half_transparent(big), "PNG", compress_level=1), **LIMITS)
    assert decoded.factor == 4 and decoded.pixels.shape == (450, 650, 3)
    assert decoded.pixels[:, :320].min() == 255  # the transparent left half
    opaque = cv2.resize(bgr(big), (650, 450), interpolation=cv2.INTER_AREA)[:, 330:].astype(np.float32)
    assert float(np.abs(decoded.pixels[:, 330:] - opaque).mean()) < 2.0


def test_finer_decode_keeps_the_orientation(photo: Image.Image) -> None:
    data = pil_bytes(photo.resize((2600, 1800)), "PNG", exif=exif_with(6), compress_level=1)
    decoded = decode_image(data, **LIMITS)
    assert decoded.original_size == (1800, 2600) and decoded.pixels.shape == (650, 450, 3)
    assert decoded.decode_at(1).shape == (2600, 1800, 3)
    assert decoded.decode_at(2).shape == (1300, 900, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_side_caps_the_long_side(photo: Image.Image, fmt: str) -> None:
    data = pil_bytes(photo.resize((4400, 3000)), fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    decoded = decode_image(data, **LIMITS, max_side=500)
    assert max(decoded.pixels.shape[:2]) == 500
    assert decoded.scale == pytest.approx(4400 / 500, rel=0.01)
    finer = decoded.decode_at(decoded.factor // 2)  # still finer decodes for small faces
    assert finer.shape[1] > 500 and finer.shape[1] == 4400 * 2 // decoded.factor
    small = decode_image(pil_bytes(photo, fmt), **LIMITS, max_side=500)  # already small: untouched
    assert small.pixels.shape == (photo.height, photo.width, 3) and small.scale == 1.0


def test_decoded_pixels_estimate_reads_the_header_only(photo: Image.Image) -> None:
    big = photo.resize((4400, 3000))
    assert decoded_pixels_estimate(pil_bytes(big, "JPEG"), **LIMITS) == 1100 * 750  # libjpeg scales as it decodes
    # progressive JPEG keeps full-size coefficients; other formats are decoded in full, then reduced
    assert decoded_pixels_estimate(pil_bytes(big, "JPEG", progressive=True), **LIMITS) == 4400 * 3000
    assert decoded_pixels_estimate(pil_bytes(big, "PNG", compress_level=1), **LIMITS) == 4400 * 3000
    assert decoded_pixels_estimate(pil_bytes(photo, "JPEG"), **LIMITS) == photo.width * photo.height
    with pytest.raises(ImageTooLarge, match="megapixel"):
        decoded_pixels_estimate(pil_bytes(big, "JPEG"), max_bytes=LIMITS["max_bytes"], max_pixels=10_000_000)
    with pytest.raises(UnsupportedImage):
        decoded_pixels_estimate(b"hello", **LIMITS)


def test_pillow_limit_follows_the_configured_cap() -> None:
    before = Image.MAX_IMAGE_PIXELS
    try:
        configure_pixel_limits(12_000_000)
        assert Image.MAX_IMAGE_PIXELS == 12_000_000
    finally:
        Image.MAX_IMAGE_PIXELS = before


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
    assert decode_image(read_image_bytes(path, max_bytes=LIMITS["max_bytes"]), **LIMITS).format is ImageFormat.WEBP


def test_thumbnail_near_border_is_square() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    thumb = crop_thumbnail(image, (0, 0, 30, 40), size=64)
    assert thumb.shape == (64, 64, 3)
    assert cv2.countNonZero(cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY)) > 0
