"""The learnable fusion loss ``Lf = Lint + α·Lgrad`` and its ablation variants.

With sources ``I_k`` ``(B, K, H, W)``, the fused image ``If`` ``(B, 1, H, W)`` and per-pixel weights ``w_k`` from the
loss generator G (a softmax over k):

* ``intensity="reference"`` (default; what the released TDFusion code trains with, so its checkpoints match):
  ``Lint = Σ_k mean((w_k · (I_k − If))²)`` — the weights are squared.
* ``intensity="paper"`` (Eq. 2 of the paper): ``Lint = mean(Σ_k w_k · (If − I_k)²)``.
* ``gradient_form="released"`` (default; ``Fusionloss_grad`` of the released code): ``Lgrad`` is the L1 distance
  between the Sobel response of ``If`` and, per pixel and per direction, the source response of largest magnitude
  (sign kept), with zero padding; x and y terms summed.
* ``gradient_form="paper"`` (Eq. 3 of the paper, written with gradient magnitudes):
  ``Lgrad = mean | |∇If| − max_k |∇I_k| |`` with ``|∇I| = |∂x I| + |∂y I|`` (Sobel, zero padding) — our reading of
  the printed ``|∇·|``, the L1 magnitude most fusion codes use.

``Lgrad`` does not depend on the weights.

Ablations of the paper's Table 3: :func:`fixed_weights` (``w_k = 1/K``) and :func:`discriminative_fusion`
(``If = Σ_k w_k I_k``). Values are pinned by ``shared/golden/fusion_loss`` (see ``tests/test_losses.py``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import kornia.filters
import torch

IntensityForm = Literal["reference", "paper"]
GradientForm = Literal["released", "paper"]


def sobel_xy(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised 3x3 Sobel responses ``(d/dx, d/dy)`` of ``(B, C, H, W)`` images with zero padding (kornia)."""
    kernel = kornia.filters.get_spatial_gradient_kernel2d("sobel", 1).to(images)  # (2, 3, 3): x then y
    grads = [kornia.filters.filter2d(images, kernel[i : i + 1], border_type="constant") for i in range(2)]
    return grads[0], grads[1]


def _max_magnitude(responses: torch.Tensor) -> torch.Tensor:
    """Per pixel, the entry of largest magnitude over dim 1 (sign kept; the first source wins ties)."""
    index = responses.abs().argmax(dim=1, keepdim=True)
    return responses.gather(1, index)


def gradient_loss(fused: torch.Tensor, sources: torch.Tensor, form: GradientForm = "released") -> torch.Tensor:
    """``Lgrad`` of ``fused`` ``(B,1,H,W)`` against ``sources`` ``(B,K,H,W)``: per direction against the strongest
    source's signed Sobel response (``"released"``), or gradient magnitudes (``"paper"``, Eq. 3)."""
    fx, fy = sobel_xy(fused)
    sx, sy = sobel_xy(sources)
    if form == "paper":
        magnitude = sx.abs() + sy.abs()
        return ((fx.abs() + fy.abs()) - magnitude.amax(dim=1, keepdim=True)).abs().mean()
    if form != "released":
        raise ValueError(f"gradient form must be 'released' or 'paper', not {form!r}")
    loss_x = (fx - _max_magnitude(sx)).abs().mean()
    loss_y = (fy - _max_magnitude(sy)).abs().mean()
    return loss_x + loss_y


def intensity_loss(
    fused: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor, form: IntensityForm = "reference"
) -> torch.Tensor:
    """``Lint`` of ``fused`` ``(B,1,H,W)`` against ``sources`` ``(B,K,H,W)`` with ``weights`` ``(B,K,H,W)``."""
    diff = sources - fused
    if form == "reference":
        return (weights * diff).pow(2).mean(dim=(0, 2, 3)).sum()
    if form == "paper":
        return (weights * diff.pow(2)).sum(dim=1).mean()
    raise ValueError(f"intensity form must be 'reference' or 'paper', not {form!r}")


def fixed_weights(sources: torch.Tensor) -> torch.Tensor:
    """Constant weights ``1/K`` of the shape of ``sources`` (ablation I of the paper: no loss generator)."""
    return torch.full_like(sources, 1.0 / sources.shape[1])


def discriminative_fusion(sources: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``If = Σ_k w_k I_k`` (ablation V: the loss generator's weights fuse the sources directly)."""
    return (weights * sources).sum(dim=1, keepdim=True)


@attrs.define(frozen=True)
class FusionLoss:
    """``Lf = Lint + α·Lgrad`` with the forms chosen by ``intensity`` and ``gradient_form`` (``α = 0`` drops
    ``Lgrad``)."""

    intensity: IntensityForm = attrs.field(default="reference", validator=attrs.validators.in_(("reference", "paper")))
    alpha: float = 1.0
    gradient_form: GradientForm = attrs.field(default="released", validator=attrs.validators.in_(("released", "paper")))

    def terms(self, fused: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"intensity", "gradient", "total"}`` as tensors (gradient is zero when ``alpha == 0``)."""
        lint = intensity_loss(fused, sources, weights, self.intensity)
        lgrad = gradient_loss(fused, sources, self.gradient_form) if self.alpha else torch.zeros_like(lint)
        return {"intensity": lint, "gradient": lgrad, "total": lint + self.alpha * lgrad}

    def __call__(self, fused: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        total = intensity_loss(fused, sources, weights, self.intensity)
        if self.alpha:
            total = total + self.alpha * gradient_loss(fused, sources, self.gradient_form)
        return total
