"""Scans as archives hold them: bit depth, channels, orientation and metadata survive a restore."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from oldphoto.images import ArchiveImage, UnreadableImage, decode_archive, encode_archive

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def gradient(h: int = 24, w: int = 32, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    y, x = np.mgrid[:h, :w]
    planes = [(x * top // (w - 1)), (y * top // (h - 1)), ((x + y) * top // (h + w - 2)), np.full((h, w), top // 2)]
    return np.stack(planes[:channels], 2).astype(dtype).squeeze()


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **options)
    return out.getvalue()


def exif_with(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Acme Scanner"  # Make
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_stays_16_bit(fmt, channels):
    pixels = gradient(channels=channels, dtype=np.uint16)
    data = (cv2_png16(pixels) if fmt == "PNG" else tiff16(pixels))
    image = decode_archive(data, "scan")
    assert image.pixels.dtype == np.uint16 and np.array_equal(image.pixels, pixels)
    again = decode_archive(encode_archive(image), "restored")
    assert again.format == fmt and np.array_equal(again.pixels, pixels)


def cv2_png16(pixels: np.ndarray) -> bytes:
    import cv2

    bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    return cv2.imencode(".png", bgr)[1].tobytes()


def tiff16(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack",
                     extrasamples=["unassalpha"] if pixels.ndim == 3 and pixels.shape[2] == 4 else None)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_exif_icc_and_dpi_are_carried(fmt):
    pixels = gradient()
    options = dict(exif=exif_with(1), icc_profile=SRGB)
    if fmt != "WEBP":
        options["dpi"] = (600, 600)
    image = decode_archive(encoded(pixels, fmt, **options), "scan")
    assert image.icc_profile == SRGB and image.format == fmt
    with Image.open(io.BytesIO(encode_archive(image))) as out:
        assert out.format == fmt and out.info.get("icc_profile") == SRGB
        assert out.getexif().get(0x010F) == "Acme Scanner"
        if fmt != "WEBP":
            assert tuple(round(d) for d in out.info["dpi"]) == (600, 600)


def test_16_bit_png_and_tiff_carry_metadata_too():
    pixels = gradient(dtype=np.uint16)
    image = ArchiveImage(pixels, "PNG", exif=exif_with(1), icc_profile=SRGB, dpi=(300.0, 300.0),
                         tiff_tags={271: "Acme Scanner"})
    with Image.open(io.BytesIO(encode_archive(image))) as out:
        assert out.info.get("icc_profile") == SRGB and round(out.info["dpi"][0]) == 300
        assert out.getexif().get(0x010F) == "Acme Scanner"
    image.format = "TIFF"
    with tifffile.TiffFile(io.BytesIO(encode_archive(image))) as tif:
        tags = tif.pages[0].tags
        assert tags["InterColorProfile"].value == SRGB and tags["Make"].value == "Acme Scanner"
        assert tags["XResolution"].value == (300, 1) and tif.pages[0].dtype == np.uint16


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_reset(orientation):
    pixels = gradient(h=20, w=30)
    data = encoded(pixels, "PNG", exif=exif_with(orientation))
    with Image.open(io.BytesIO(data)) as reference:
        expected = np.asarray(ImageOps.exif_transpose(reference))
    image = decode_archive(data, "scan")
    assert np.array_equal(image.pixels, expected)
    exif = Image.Exif()
    exif.load(image.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "Acme Scanner"  # upright now, the rest kept


def test_gray_alpha_palette_and_cmyk():
    gray = decode_archive(encoded(gradient(channels=1), "PNG"), "g")
    assert gray.pixels.shape == (24, 32) and gray.converted_from is None
    rgba = decode_archive(encoded(gradient(channels=4), "PNG"), "a")
    assert rgba.pixels.shape == (24, 32, 4)
    palette = decode_archive(_palette_png(), "p")
    assert palette.converted_from == "P" and palette.pixels.shape[2] == 3
    cmyk_bytes = io.BytesIO()
    Image.fromarray(gradient()).convert("CMYK").save(cmyk_bytes, format="JPEG", icc_profile=b"not an RGB profile")
    cmyk = decode_archive(cmyk_bytes.getvalue(), "c")
    assert cmyk.converted_from == "CMYK" and cmyk.pixels.shape == (24, 32, 3) and cmyk.icc_profile is None
    assert decode_archive(encode_archive(cmyk), "out").pixels.shape == (24, 32, 3)


def _palette_png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(out, format="PNG")
    return out.getvalue()


def test_bad_inputs_are_named_with_their_reason():
    with pytest.raises(UnreadableImage, match="empty.jpg: empty file"):
        decode_archive(b"", "empty.jpg")
    with pytest.raises(UnreadableImage, match="text.jpg: cannot decode image: not a JPEG, PNG, TIFF, BMP or WebP file$"):
        decode_archive(b"this is not a photograph", "text.jpg")
    full = encoded(gradient(h=64, w=64), "JPEG")
    with pytest.raises(UnreadableImage, match="truncated.jpg: cannot decode"):
        decode_archive(full[: len(full) // 2], "truncated.jpg")
    with pytest.raises(UnreadableImage, match="bomb.png: 100000x100000 exceeds the limit of 1000000 pixels"):
        decode_archive(huge_header_png(100_000, 100_000), "bomb.png", max_pixels=1_000_000)


def huge_header_png(width: int, height: int) -> bytes:
    """A tiny file whose header claims width x height: a decompression bomb's calling card."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
