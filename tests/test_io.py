import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion_core.common.io import ImageReadError, list_images, read_image, write_fused, write_image
from tests.conftest import shared_path


def test_gray_and_colour_real_images():
    y, c = read_image(shared_path("data", "LLVIP", "train", "ir", "010001.png"))
    assert y.shape[0] == 1 and c.shape[0] == 2 and torch.all(c == 0.5)
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    y2, c2 = read_image(shared_path("data", "LLVIP", "train", "vi", "010001.png"))
    assert y2.shape == y.shape and (c2 - 0.5).abs().max() > 0.01


def test_write_read_round_trip(tmp_path):
    rgb = torch.rand(3, 10, 12)
    write_image(tmp_path / "a.png", rgb)
    arr = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float32) / 255
    assert np.abs(arr.transpose(2, 0, 1) - rgb.numpy()).max() <= 0.5 / 255 + 1e-6
    y, c = read_image(tmp_path / "a.png")
    write_fused(tmp_path / "b.png", y, c)
    y3, _ = read_image(tmp_path / "b.png")
    assert (y3 - y).abs().max() < 2 / 255


def test_truncated_and_missing_files_are_named(tmp_path):
    src = shared_path("data", "LLVIP", "train", "ir", "010001.png").read_bytes()
    bad = tmp_path / "trunc.png"
    bad.write_bytes(src[: len(src) // 3])
    with pytest.raises(ImageReadError, match="trunc"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="missing"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="nofolder"):
        list_images(tmp_path / "nofolder")
