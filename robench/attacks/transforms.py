"""Input and gradient transforms of the transfer attacks: DI's resize-and-pad and TI's Gaussian smoothing.

Both are pure functions on [N, C, H, W] tensors. DI's random choices come in as numbers (one row of
uniform [0, 1) draws per sample, from ``SampleNoise.uniform``), so a sample's transform depends on
its own stream only, never on the batch it travels in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DI_RESIZE = 330 / 299  # Xie et al. 2019, Sec. 4.1: a 299 px image resized to [299, 330), padded to 330
DI_DRAWS = 4  # uniform numbers per sample and gradient: apply?, size, top, left
TI_SIDE = 15  # Dong et al. 2019, Sec. 4.1: a 15 x 15 Gaussian kernel on 299 px images
TI_AT = 299
TI_MIN = 5  # the smallest automatic kernel: at 3 (sigma 1/3 px) the smoothing is 99% the identity
TI_NSIG = 3.0  # the kernel spans +-3 sigma, as the authors' gkern(kernlen, nsig=3)


def diverse(x: Tensor, draws: Tensor, prob: float, resize: float = DI_RESIZE) -> Tensor:
    """DI's input diversity (Xie et al., CVPR 2019, Sec. 3.1): with probability ``prob`` per sample, resize and pad.

    x: [N, C, H, W]; draws: [N, 4] uniform [0, 1) numbers per sample. A transformed sample is the image
    resized to rnd x rnd pixels, rnd uniform in [side, canvas) with canvas = round(side * ``resize``), placed
    at a uniform random offset on a zero canvas of canvas x canvas pixels (the paper: 299 -> [299, 330) on 330).
    The paper feeds the canvas to the model as it is; here the canvas is sampled back at the input size in
    the same bilinear interpolation (one ``grid_sample``), because many models (ViTs) take one size only.
    A sample the coin skips is x itself, bit for bit. Differentiable in x. Raises nothing: an image too small
    for a larger canvas (side * resize rounds to side) is returned unchanged.
    """
    n, _, h, w = x.shape
    theta = _placement(draws.to(torch.float64), h, w, resize)
    if theta is None:
        return x
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [n, x.shape[1], h, w], align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    apply = (draws[:, 0] < prob).to(x.device).view(n, 1, 1, 1)
    return torch.where(apply, moved, x)


def _placement(draws: Tensor, h: int, w: int, resize: float) -> Tensor | None:
    """[N, 2, 3] affine maps from the canvas to the image for ``grid_sample``; None if the canvas is no larger.

    Sizes and offsets are whole pixels drawn as the paper's code draws them: rnd in [side, canvas),
    top and left in [0, canvas - rnd). One size draw serves both axes, so the aspect ratio stays.
    """
    canvas_h, canvas_w = round(h * resize), round(w * resize)
    if canvas_h <= h or canvas_w <= w:
        return None
    rnd_h = h + torch.floor(draws[:, 1] * (canvas_h - h))
    rnd_w = w + torch.floor(draws[:, 1] * (canvas_w - w))
    top = torch.floor(draws[:, 2] * (canvas_h - rnd_h))
    left = torch.floor(draws[:, 3] * (canvas_w - rnd_w))
    theta = torch.zeros(len(draws), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = canvas_w / rnd_w
    theta[:, 0, 2] = (canvas_w - 2 * left) / rnd_w - 1
    theta[:, 1, 1] = canvas_h / rnd_h
    theta[:, 1, 2] = (canvas_h - 2 * top) / rnd_h - 1
    return theta


def kernel_side(kernel: int | str, h: int, w: int) -> int:
    """TI's kernel side in pixels: ``kernel`` itself, or for ``"auto"`` the paper's 15 at 299 px scaled to the image.

    "auto" is the odd number nearest 15 * min(h, w) / 299, at least 5: 15 at 299 px, 11 at 224, 7 at 128,
    5 at 64 and 32 (15 px on a 32 px digit, torchattacks' default at any size, blurs away the image's
    structure; 3 px with the paper's sigma is the identity to 1%).
    """
    if kernel != "auto":
        return int(kernel)
    scaled = TI_SIDE * min(h, w) / TI_AT
    return max(TI_MIN, 2 * round((scaled - 1) / 2) + 1)


def gaussian_kernel(side: int) -> Tensor:
    """[side, side] float64 Gaussian weights summing to 1, spanning +-3 sigma (the TI authors' gkern).

    The weights are the standard normal density at ``side`` points evenly spaced on [-3, 3], outer
    product, normalised; sigma is therefore (side - 1) / 6 pixels (2.33 px at the paper's 15).
    """
    if side == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    t = torch.linspace(-TI_NSIG, TI_NSIG, side, dtype=torch.float64)
    line = torch.exp(-0.5 * t * t)
    grid = torch.outer(line, line)
    return grid / grid.sum()


def smooth(grad: Tensor, kernel: Tensor) -> Tensor:
    """TI (Dong et al., CVPR 2019, eq. 8): each channel of grad [N, C, H, W] convolved with ``kernel``, zero padded.

    The same [k, k] kernel for every channel (a depthwise convolution); the output has grad's shape.
    """
    if kernel.numel() == 1:
        return grad
    c, k = grad.shape[1], kernel.shape[-1]
    weight = kernel.to(device=grad.device, dtype=grad.dtype).expand(c, 1, k, k)
    return F.conv2d(grad, weight, padding=k // 2, groups=c)
