"""Raw client inputs → rows in the store's own scale and layout (what app.service.store.raw_to_features takes):
an image body (PNG or JPEG), or base64 images inside {"instances": [...]}.

The model's preprocessing is the store's: its image size and channels (an upload is converted and resized to
them), its scale (uint8 0-255, or floats in [0, 1]), then the store's normalisation. Limits: the body size
(app/api/guard.py) and UNLEARND_MAX_IMAGE_PIXELS, checked on the header before a pixel is decoded; a corrupt,
truncated or oversized image is a 4xx, never a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np

from app.errors import InvalidRequest, UnsupportedMediaType
from app.ml.data.dataset import Dataset

IMAGE_TYPES = ("image/png", "image/jpeg")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def image_rows(store: Dataset, blobs: list[bytes], *, max_pixels: int) -> np.ndarray:
    """Each encoded image as one flattened row in the store's scale."""
    if not store.is_image:
        raise UnsupportedMediaType("this model takes feature rows, not images: send {\"instances\": [[...]]}")
    return np.stack([_decode(store, blob, max_pixels).reshape(-1) for blob in blobs]).astype(np.float64)


def base64_images(items: list[object]) -> list[bytes]:
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidRequest("instances must be all number lists (feature rows) or all base64 strings (images)")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"instance {k} is not valid base64") from None
    return out


def _decode(store: Dataset, blob: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    _, h, w, c = store.x.shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(blob))
            if img.format not in ("PNG", "JPEG"):
                raise UnsupportedMediaType(f"images must be PNG or JPEG, not {img.format}")
            if img.width * img.height > max_pixels:
                raise InvalidRequest(f"the image has {img.width}×{img.height} pixels; at most {max_pixels} "
                                     "(UNLEARND_MAX_IMAGE_PIXELS)")
            img.load()  # a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise InvalidRequest(f"the image could not be decoded ({type(e).__name__})") from None
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8).reshape(h, w, c)
    return pixels if store.x.dtype == np.uint8 else pixels.astype(np.float32) / 255.0
