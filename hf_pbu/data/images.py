"""Images as the user sees them: the one decoding path of every split and of the forget-only folder.

A model was trained (and is looked at) on images as `datasets` decodes them: `datasets.Image.decode_example` opens
the file, applies its EXIF orientation (a phone photo stored sideways with Orientation 6 is read upright) and the
feature's `mode`, if any. The run reads them the same way, through the same code, so that it measures and forgets the
images the model knows, not their raw pixels.

Then one step `datasets` leaves to the user: the model reads 8-bit images. `convert("RGB")` clips high-bit-depth
modes (a 16-bit scan becomes all white), so those are scaled to 8 bits first (`to_8bit`); palette, alpha, CMYK and the
other 8-bit modes go through Pillow's `convert`, as before.
"""

import dataclasses

import numpy as np
from datasets import Image as ImageFeature
from PIL import Image as PILImage
from PIL import ImageOps

# Modes whose samples are wider than 8 bits. Pillow reads 16-bit grayscale PNGs and TIFFs as "I;16" (or its byte
# orders), 32-bit integer TIFFs (and `datasets`' encoding of int32/int64 arrays) as "I", float TIFFs as "F".
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
WIDE_MODES = (*SIXTEEN_BIT_MODES, "I", "F")
# The full scale of integer samples, by the bits their values need.
INTEGER_FULL_SCALES = (255.0, 65535.0, 2.0**31 - 1)


def full_scale(mode: str, values: np.ndarray) -> float:
    """The value that maps to white when `values` (of an image in `mode`) are scaled to 8 bits.

    "I;16*": 65535, whatever the image holds (its mode says 16 bits). "I": the smallest of 8, 16 or 31 bits that holds
    the image's largest value (its mode does not say: `datasets` stores 8-bit int64 arrays as "I", Pillow used to open
    16-bit PNGs as "I"). "F": 1.0 when the values lie in [0, 1] (the usual float convention), else as "I".
    """
    if mode in SIXTEEN_BIT_MODES:
        return 65535.0
    top = float(values.max(initial=0.0))
    if mode == "F" and top <= 1.0:
        return 1.0
    return next((scale for scale in INTEGER_FULL_SCALES if top <= scale), top)


def to_8bit(image: PILImage.Image) -> PILImage.Image:
    """A grayscale image wider than 8 bits ("I;16", "I", "F") scaled linearly to 8-bit "L" (`full_scale` maps to 255;
    negative and non-finite values read as 0); any other image unchanged."""
    if image.mode not in WIDE_MODES:
        return image
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scaled = np.clip(np.rint(values * (255.0 / full_scale(image.mode, values))), 0, 255).astype(np.uint8)
    return PILImage.fromarray(scaled)


def upright(image: PILImage.Image) -> PILImage.Image:
    """`image` turned as its EXIF Orientation says, as `datasets` does on decoding (`ImageOps.exif_transpose`, which
    also drops the tag: a second call changes nothing)."""
    if image.getexif().get(PILImage.ExifTags.Base.Orientation) is not None:
        return ImageOps.exif_transpose(image)
    return image


def image_source(value) -> str:
    """The file an image value comes from, for error messages."""
    if isinstance(value, PILImage.Image):
        return getattr(value, "filename", "") or "<in-memory image>"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("path") or "<embedded bytes>"
    return f"<{type(value).__name__}>"


def open_image(value, mode: str | None = None, feature: ImageFeature | None = None) -> PILImage.Image:
    """An image value of a `datasets` column (undecoded {"path", "bytes"}, a path, or an already decoded PIL image)
    read as `datasets` decodes it with `feature` (the column's Image feature: its `mode` applies), upright and in 8
    bits, then converted to `mode` (e.g. the model's "RGB" or "L").

    Anything that cannot be read raises one `ValueError` naming the file (no traceback from the decoder)."""
    decoder = dataclasses.replace(feature or ImageFeature(), decode=True)
    try:
        if isinstance(value, PILImage.Image):
            image = value
        else:
            image = decoder.decode_example({"path": value, "bytes": None} if isinstance(value, str) else value)
        image = to_8bit(upright(image))
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
    except MemoryError:
        raise
    except Exception as err:  # a user's file: any decoder failure is that file's fault, and is named
        raise ValueError(
            f"Cannot read the image file {image_source(value)}: {type(err).__name__}: {err}. Remove or replace it."
        ) from None
    return image
