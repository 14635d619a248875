"""Training-time image augmentation in plain torch (there is no CPU torchvision): a random affine map per image.

Small digits and garments change class under no small rotation, shift, zoom or shear, so each training image is
drawn anew every time it is seen; the model then learns the shape, not the pixel positions, from few images
(DeiT's and timm's recipes do this with RandAugment; a random affine covers the geometric part of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomAffine:
    """Rotate by up to ``rotation`` degrees, shift by up to ``translate`` of the image size, zoom by a factor in
    ``[1 - scale, 1 + scale]`` and shear by up to ``shear`` degrees, each drawn uniformly per image, and mirror
    left-right with probability ``flip`` (a mirror is an affine map too: x -> -x).

    Applied to normalized ``pixel_values`` (N x C x H x W); pixels moved in from outside repeat the border,
    which is the background for centred objects (a zero fill would be the mean colour, not the background).
    """

    rotation: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    flip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation", "translate", "scale", "shear"):
            if getattr(self, name) < 0:
                raise ValueError(f"--random_{name} must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        if self.scale >= 1:
            raise ValueError(f"--random_scale must be below 1 (a zoom factor in [1 - scale, 1 + scale]), got {self.scale}.")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"--random_hflip is a probability in [0, 1] (0 turns it off), got {self.flip}.")

    @property
    def active(self) -> bool:
        return any((self.rotation, self.translate, self.scale, self.shear, self.flip))

    def matrices(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` random 2 x 3 maps from output to input coordinates, in ``affine_grid``'s [-1, 1] units."""

        def uniform(bound: float) -> torch.Tensor:
            return (torch.rand(count, generator=generator) * 2 - 1) * bound

        angle = uniform(math.radians(self.rotation))
        shear = uniform(math.radians(self.shear))
        zoom = 1 + uniform(self.scale)
        shift = torch.stack([uniform(2 * self.translate), uniform(2 * self.translate)], dim=1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation @ shear (x sheared along y), then divided by the zoom: sampling the input at 1/zoom enlarges.
        linear = torch.stack([
            torch.stack([cos, cos * torch.tan(shear) - sin], dim=1),
            torch.stack([sin, sin * torch.tan(shear) + cos], dim=1),
        ], dim=1) / zoom[:, None, None]
        if self.flip:  # drawn only when asked for: runs without it keep their random stream
            mirror = torch.where(torch.rand(count, generator=generator) < self.flip, -1.0, 1.0)
            linear[:, :, 0] *= mirror[:, None]  # the output's x is read from the input's -x
        return torch.cat([linear, shift[:, :, None]], dim=2)

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.active:
            return pixel_values
        theta = self.matrices(pixel_values.shape[0], generator).to(pixel_values)
        grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False)
        return F.grid_sample(pixel_values, grid, mode="bilinear", padding_mode="border", align_corners=False)
