"""Inputs: ImageNet preprocessing, arrays, and clear errors for anything unusable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeci_mqtt.errors import InputError
from edgeci_mqtt.imaging import IMAGENET_MEAN, IMAGENET_STD, MAX_NORMALISED, SAMPLE_IMAGE, check_image, load_input
from edgeci_mqtt.labels import imagenet_labels, top_k
from edgeci_mqtt.models import StageChain

pytestmark = pytest.mark.pure


def test_constant_image_is_normalised_like_torchvision(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.new("RGB", (300, 200), (128, 64, 255)).save(path)
    x = load_input(path, 224)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    for channel, value in enumerate((128, 64, 255)):
        expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(x[0, channel], torch.full((224, 224), expected), atol=1e-5)


def test_resize_then_centre_crop(tmp_path: Path) -> None:
    """A wide image whose left half is black: after resize-256 and centre-crop-224 both
    halves remain, split at the centre column."""
    path = tmp_path / "half.png"
    image = np.zeros((200, 400, 3), dtype=np.uint8)
    image[:, 200:] = 255
    Image.fromarray(image).save(path)
    x = load_input(path, 224)
    assert x[0, 0, 100, 50] < 0 < x[0, 0, 100, 170]


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (64, 80)).save(path)
        assert load_input(path, 32).shape == (1, 3, 32, 32)


def test_sample_image_ships_with_the_package() -> None:
    assert load_input(SAMPLE_IMAGE).shape == (1, 3, 224, 224)


def test_arrays_are_taken_as_they_are(tmp_path: Path) -> None:
    array = np.random.default_rng(0).standard_normal((3, 30, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    x = load_input(tmp_path / "x.npy", size=224)
    assert x.shape == (1, 3, 30, 40) and np.array_equal(x[0].numpy(), array)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("hello, I am text"), "not an image"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30), "not an image"),
    ],
)
def test_files_that_are_not_images(tmp_path: Path, write, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fake.png"
    write(path)
    with pytest.raises(InputError, match=message):
        load_input(path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 8, 8), dtype=np.int64), "int64"),
        (np.zeros((3, 8, 8), dtype=np.float64), "float64"),
        (np.full((3, 8, 8), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((3, 8, 8), 200.0, dtype=np.float32), "not normalised"),
        (np.zeros((8, 8), dtype=np.float32), r"shape \(8, 8\)"),
        (np.zeros((2, 3, 8, 8), dtype=np.float32), r"shape \(2, 3, 8, 8\)"),
    ],
)
def test_unusable_arrays(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(InputError, match=message):
        load_input(tmp_path / "a.npy")


@pytest.mark.parametrize(
    ("image", "complaint"),
    [
        (np.zeros((1, 3, 4, 4), np.float64), "float64"),
        (np.zeros((1, 3, 4, 4), np.uint8), "uint8"),
        (np.zeros((1, 3, 4, 4), np.complex64), "complex64"),
        (np.array([[[[0.0, np.nan]]]], np.float32), "NaN or infinite"),
        (np.array([[[[0.0, -np.inf]]]], np.float32), "NaN or infinite"),
        (np.array([[[[0.0, 101.0]]]], np.float32), "not normalised"),
    ],
)
def test_check_image_refuses_what_is_not_a_normalised_float32_image(image: np.ndarray, complaint: str) -> None:
    with pytest.raises(InputError, match=complaint):
        check_image(image)


def test_check_image_takes_normalised_float32() -> None:
    check_image(np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32))
    check_image(np.full((1, 3, 2, 2), MAX_NORMALISED, np.float32))  # the bound itself is in
    check_image(np.zeros((1, 3, 0, 0), np.float32))  # empty: the model's own check says why


def test_missing_file_and_broken_array(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_input(tmp_path / "none.png")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="not a NumPy"):
        load_input(tmp_path / "bad.npy")


def test_wrong_channel_count(chains: dict[str, StageChain]) -> None:
    with pytest.raises(InputError, match="takes 3 input channels, got 4"):
        chains["resnet34"].check_input(torch.zeros(1, 4, 64, 64))
    with pytest.raises(InputError, match=r"\(1, C, H, W\)"):
        chains["resnet34"].check_input(torch.zeros(3, 64, 64))


def test_input_too_small_names_the_stage(chains: dict[str, StageChain]) -> None:
    with pytest.raises(
        InputError, match=r"vgg16: input 3x16x16 is too small: stage features\.30 \(maxpool\) would turn 512x1x1"
    ):
        chains["vgg16"].check_input(torch.zeros(1, 3, 16, 16))
    assert chains["vgg16"].check_input(torch.zeros(1, 3, 32, 32))[-1].height == 1


def test_labels_and_top_k() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[999] == "toilet tissue"
    logits = torch.zeros(1, 1000)
    logits[0, 1] = 5.0
    best = top_k(logits, 5)
    assert best[0].index == 1 and best[0].label == "goldfish" and len(best) == 5
    assert top_k(torch.tensor([0.0, 1.0, 2.0]), 5)[0].label == "class 2"
