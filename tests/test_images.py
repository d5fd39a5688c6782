"""Images read as `datasets` decodes them (EXIF orientation, the column's mode), high bit depths scaled to 8 bits,
every other mode converted, and any file that cannot be read named in one error: `hf_pbu.data.images.open_image`."""

import io

import numpy as np
import pytest
from datasets import Dataset, Image
from datasets.features.image import image_to_bytes
from PIL import Image as PILImage

from hf_pbu.data import with_image_transform
from hf_pbu.data.images import open_image, to_8bit


def _asymmetric(size=(12, 8)) -> PILImage.Image:
    """An upright RGB image that no rotation or flip maps onto itself: a bright block in the top-left corner."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:3, :4] = (250, 20, 20)
    pixels[-2:, :, 2] = 200
    return PILImage.fromarray(pixels)


def _rotated_jpeg(upright: PILImage.Image, orientation: int = 6) -> bytes:
    """`upright` stored as a phone does: the sensor's pixels (turned 90 degrees counter-clockwise) and EXIF
    Orientation 6 ("turn 90 degrees clockwise to display")."""
    exif = PILImage.Exif()
    exif[PILImage.ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    upright.transpose(PILImage.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=98, subsampling=0,
                                                             exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_as_datasets_does(tmp_path):
    upright = _asymmetric()
    path = tmp_path / "phone.jpg"
    path.write_bytes(_rotated_jpeg(upright))
    raw = PILImage.open(path)
    assert raw.size == (8, 12)  # stored sideways
    read = open_image({"path": str(path), "bytes": None}, "RGB")
    assert read.size == upright.size == Image().decode_example({"path": str(path), "bytes": None}).size
    assert np.abs(np.asarray(read, dtype=int) - np.asarray(upright, dtype=int)).mean() < 5  # JPEG noise only
    assert np.asarray(read)[:3, :4, 0].mean() > 200  # the red block where it belongs: top-left
    assert np.array_equal(np.asarray(open_image(read)), np.asarray(read))  # a decoded image is not turned twice
    from_bytes = open_image({"path": None, "bytes": path.read_bytes()}, "RGB")
    assert np.array_equal(np.asarray(from_bytes), np.asarray(read))


def _encoded(image: PILImage.Image) -> bytes:
    """A 16-bit grayscale PNG for "I;16" (a scanner's file); otherwise as `datasets` stores an array (a TIFF)."""
    if image.mode == "I;16":
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    return image_to_bytes(image)


@pytest.mark.parametrize("mode, dtype, top", [("I;16", np.uint16, 65535), ("I", np.int32, 65535),
                                              ("F", np.float32, 1.0), ("I", np.int32, 255)])
def test_high_bit_depth_is_scaled_to_8_bits_not_clipped(mode, dtype, top):
    """A 16-bit scan (or a float image in [0, 1], or an int image with 8-bit values) keeps its contrast: a ramp from
    black to the mode's white reads as a ramp from 0 to 255, where `convert("RGB")` clipped it to white (or black)."""
    ramp = np.linspace(0, top, 64 * 16).reshape(16, 64).astype(dtype)
    image = PILImage.fromarray(ramp)
    encoded = {"path": None, "bytes": _encoded(image)}
    assert Image().decode_example(encoded).mode == mode
    read = np.asarray(open_image(encoded, "RGB"), dtype=float)
    expected = np.rint(ramp.astype(float) * 255.0 / top)
    assert np.abs(read[..., 0] - expected).max() <= 1
    assert read.min() == 0 and read.max() == 255 and 100 < read.mean() < 155
    clipped = np.asarray(image.convert("RGB"), dtype=float)[..., 0]  # Pillow's plain conversion: white, or black
    assert np.abs(clipped - expected).mean() > 100 or top == 255


def test_eight_bit_modes_are_converted_as_before():
    """Palette, alpha, CMYK, LA, 1-bit and grayscale images all become the model's mode (to_8bit leaves them)."""
    base = _asymmetric()
    for mode in ("P", "RGBA", "CMYK", "LA", "L", "1", "YCbCr"):
        image = base.convert(mode)
        assert to_8bit(image) is image
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF" if mode in ("CMYK", "YCbCr") else "PNG")
        read = open_image({"path": None, "bytes": buffer.getvalue()}, "RGB")
        assert read.mode == "RGB" and read.size == base.size
        assert np.array_equal(np.asarray(read), np.asarray(image.convert("RGB")))


def test_column_mode_applies_as_in_datasets(tmp_path):
    """An Image feature with a `mode` (here "L") converts on decoding, before the model's mode: as `datasets` does."""
    path = tmp_path / "colour.png"
    _asymmetric().save(path)
    feature = Image(mode="L", decode=False)
    read = open_image({"path": str(path), "bytes": None}, "RGB", feature)
    gray = np.asarray(_asymmetric().convert("L"))
    assert np.array_equal(np.asarray(read)[..., 0], gray) and np.array_equal(np.asarray(read)[..., 1], gray)


@pytest.mark.parametrize("content", [
    b"not an image at all",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature, then garbage
    b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # a JPEG with broken EXIF, no image
])
def test_undecodable_file_is_named_without_traceback(tmp_path, content):
    path = tmp_path / "sub" / "bad_image.jpg"
    path.parent.mkdir()
    path.write_bytes(content)
    for value in ({"path": str(path), "bytes": None}, str(path)):
        with pytest.raises(ValueError, match=r"^Cannot read the image file .*sub/bad_image\.jpg: ") as error:
            open_image(value, "RGB")
        assert error.value.__cause__ is None and error.value.__suppress_context__


def test_decoder_errors_that_are_not_oserrors_are_named(tmp_path, monkeypatch):
    """Pillow's decompression-bomb guard raises DecompressionBombError, not an OSError: named like the rest."""
    path = tmp_path / "huge.png"
    PILImage.new("L", (64, 64)).save(path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"Cannot read the image file .*huge\.png: DecompressionBombError"):
        open_image({"path": str(path), "bytes": None})


def test_every_split_reads_through_the_same_decoder(tmp_path):
    """`with_image_transform` (every split, and the forget-only folder) gives upright, scaled images."""
    upright, phone = _asymmetric(), tmp_path / "phone.jpg"
    phone.write_bytes(_rotated_jpeg(upright))
    scan = tmp_path / "scan.png"
    PILImage.fromarray(np.full((8, 12), 30000, dtype=np.uint16)).save(scan)
    data = Dataset.from_dict({"image": [str(phone), str(scan)], "label": [0, 1]})
    data = data.cast_column("image", Image(decode=False))
    shapes = with_image_transform(data, lambda image: np.asarray(image))
    first, second = shapes[0]["pixel_values"], shapes[1]["pixel_values"]
    assert first.shape == (8, 12, 3) and first[:3, :4, 0].mean() > 200  # upright: the red block top-left
    assert second.shape == (8, 12, 3) and abs(int(second[0, 0, 0]) - round(30000 * 255 / 65535)) <= 1
