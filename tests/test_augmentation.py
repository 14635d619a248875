"""training/augmentation.py: the random affine map of training images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from augmentation import RandomAffine  # noqa: E402


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_no_bounds_leave_the_images_untouched():
    images = torch.randn(3, 1, 8, 8)
    assert RandomAffine()(images) is images
    assert not RandomAffine().active and RandomAffine(shear=1).active


def test_each_bound_draws_only_its_own_map():
    rotations = RandomAffine(rotation=30).matrices(200, generator())
    linear = rotations[:, :, :2]
    assert torch.allclose(linear @ linear.transpose(1, 2), torch.eye(2).expand(200, 2, 2), atol=1e-6)
    angles = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert angles.abs().max() <= 30 and angles.abs().max() > 25  # uniform over [-30, 30]
    assert rotations[:, :, 2].abs().max() == 0

    zooms = RandomAffine(scale=0.2).matrices(200, generator())
    factors = 1 / zooms[:, 0, 0]
    assert torch.equal(zooms[:, 0, 0], zooms[:, 1, 1]) and zooms[:, 0, 1].abs().max() == 0
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6

    shifts = RandomAffine(translate=0.25).matrices(200, generator())
    assert torch.equal(shifts[:, :, :2], torch.eye(2).expand(200, 2, 2))
    assert shifts[:, :, 2].abs().max() <= 0.5 and shifts[:, :, 2].abs().max() > 0.4

    shears = RandomAffine(shear=20).matrices(200, generator())
    assert torch.allclose(torch.linalg.det(shears[:, :, :2]), torch.ones(200), atol=1e-6)  # shear keeps area


def test_a_shift_moves_the_image_by_the_drawn_pixels():
    images = torch.zeros(50, 1, 28, 28)
    images[:, :, 12:16, 12:16] = 1.0
    augment = RandomAffine(translate=0.1)
    shifts = augment.matrices(50, generator(3))[:, :, 2]
    moved = augment(images, generator(3))
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = moved.sum(dim=(1, 2, 3))
    centre_x = (moved[:, 0] * cols).sum(dim=(1, 2)) / mass
    centre_y = (moved[:, 0] * rows).sum(dim=(1, 2)) / mass
    # The output samples the input at x + shift (affine_grid units: 2 per image width): content moves by -shift.
    assert torch.allclose(centre_x, 13.5 - shifts[:, 0] * 14, atol=1e-3)
    assert torch.allclose(centre_y, 13.5 - shifts[:, 1] * 14, atol=1e-3)


def test_the_background_stays_the_background():
    background = torch.full((4, 3, 16, 16), -0.42)  # a normalized black, not zero
    augmented = RandomAffine(rotation=45, translate=0.3, scale=0.5, shear=30)(background, generator())
    assert torch.allclose(augmented, background)


@pytest.mark.parametrize("arguments, message", [
    (dict(rotation=-1), "--random_rotation must be >= 0"),
    (dict(translate=-0.1), "--random_translate must be >= 0"),
    (dict(scale=1.0), "--random_scale must be below 1"),
    (dict(flip=1.5), "--random_hflip is a probability"),
])
def test_bad_bounds_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        RandomAffine(**arguments)


def test_a_flip_mirrors_exactly_the_drawn_images():
    images = torch.randn(64, 2, 6, 6)
    flipped = RandomAffine(flip=0.5)(images, generator(5))
    mirrored = torch.tensor([torch.allclose(out, image.flip(-1), atol=1e-5) for out, image in zip(flipped, images)])
    kept = torch.tensor([torch.allclose(out, image, atol=1e-5) for out, image in zip(flipped, images)])
    assert torch.all(mirrored ^ kept) and 20 < int(mirrored.sum()) < 44  # each image one or the other, ~half
    assert torch.allclose(RandomAffine(flip=1.0)(images, generator()), images.flip(-1), atol=1e-5)
