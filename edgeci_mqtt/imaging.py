"""Turn a file into a model input: an image (ImageNet preprocessing) or a raw array."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from edgeci_mqtt.errors import InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SAMPLE_IMAGE", "load_input", "preprocess"]

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
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path} holds {array.dtype} values; a normalised float array is expected")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != 1:
        raise InputError(f"{path} has shape {array.shape}; expected (C, H, W) or (1, C, H, W)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


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
