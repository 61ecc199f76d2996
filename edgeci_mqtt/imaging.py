"""Turn a file into a model input: an image (ImageNet preprocessing) or a raw array."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from edgeci_mqtt.errors import InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_NORMALISED", "SAMPLE_IMAGE", "check_image", "load_input", "preprocess"]

MAX_NORMALISED = 100.0
"""The largest magnitude a normalised input may hold. ImageNet-normalised pixels lie within
about ±3; a float image of raw 0-255 pixels is refused rather than silently misread."""


def check_image(image: np.ndarray, where: str = "image") -> None:
    """Refuse, with a clear :class:`InputError`, what cannot be a normalised float32 image:
    another dtype (no silent casts: a uint8 image would be read un-normalised, a complex one
    would lose its imaginary part), NaN or infinite values (they would come back as NaN
    scores, as a success), or values far outside a normalised range."""
    if image.dtype != np.float32:
        raise InputError(
            f"{where} is {image.dtype}; EdgeCI takes normalised float32 arrays "
            "(normalise, then .astype(np.float32)) or image files"
        )
    if image.size and not np.isfinite(image).all():
        raise InputError(f"{where} holds NaN or infinite values")
    peak = float(np.abs(image).max()) if image.size else 0.0
    if peak > MAX_NORMALISED:
        raise InputError(
            f"{where} holds values up to {peak:.4g}: not normalised (expected within ±{MAX_NORMALISED:g}; "
            "image files are normalised for you)"
        )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLE_IMAGE = Path(str(files("edgeci_mqtt") / "data" / "sample.png"))


def preprocess(image: Image.Image, size: int = 224) -> Tensor:
    """torchvision's ImageNet evaluation transform, scaled to ``size``.

    Resize the shorter side to ``size * 256 / 224`` (bilinear, antialiased as PIL
    does), centre-crop ``size`` x ``size``, scale to [0, 1], normalise with the
    ImageNet mean and std. Returns a (1, 3, size, size) float32 tensor.
    """
    if size < 1:
        raise InputError(f"image size must be positive, got {size}")
    image = image.convert("RGB")
    short = round(size * 256 / 224)
    width, height = image.size
    new_size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    image = image.resize(new_size, Image.Resampling.BILINEAR)
    left = round((new_size[0] - size) / 2.0)
    top = round((new_size[1] - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean, std = np.array(IMAGENET_MEAN, dtype=np.float32), np.array(IMAGENET_STD, dtype=np.float32)
    normalised = (pixels - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


def _load_array(path: Path) -> Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a NumPy .npy array: {exc}") from exc
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != 1:
        raise InputError(f"{path} has shape {array.shape}; expected (C, H, W) or (1, C, H, W)")
    check_image(array, str(path))
    return torch.from_numpy(np.ascontiguousarray(array))


def load_input(path: Path, size: int = 224) -> Tensor:
    """A (1, C, H, W) float32 input from an image file or a ``.npy`` array.

    Arrays are taken as already normalised and are not resized.
    """
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    if path.suffix.lower() == ".npy":
        return _load_array(path)
    try:
        with Image.open(path) as image:
            image.load()
            return preprocess(image, size)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path} is not an image that can be read ({exc})") from exc
