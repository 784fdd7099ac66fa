"""Fusion-quality metrics, vectorised in torch (batched, CPU or GPU, float64 inside).

Conventions
-----------
* **Value range.** Every function takes images on the **0..255 scale** (float tensors, as the reference code reads
  8-bit PNGs with OpenCV). :func:`compute_fusion_metrics` rescales for you with ``value_range`` (pass ``1.0`` for
  images in [0, 1]).
* **Shapes.** ``fused`` is ``(H, W)`` or ``(B, 1, H, W)``; ``sources`` is ``(K, H, W)`` / ``(B, K, H, W)`` (K sources,
  usually infrared and visible) or a sequence of K tensors shaped like ``fused``. Each function returns one value per
  image: a tensor ``(B,)``, or a 0-d tensor for ``(H, W)`` input.
* **Precision.** Inputs are converted to float64 on their own device; histogram metrics round to integers in 0..255.

The paper's Table 1 set (EN, SF, SCD, VIF, Qabf, SSIM) follows the Python evaluator released with TDFusion
(``Evaluator.py`` of github HaowenBai/TDFusion, itself derived from the ``utils/Evaluator.py`` of CDDFuse), with VIF
from ``sewar.full_ref.vifp`` and SSIM from ``skimage.metrics.structural_similarity``. The values are pinned by
``shared/golden/fusion_metrics/expected.json`` (tests/test_metrics_fusion.py). The extra metrics (SD, AG, MI, PSNR,
CC, MS-SSIM) follow the same CDDFuse evaluator and the VIFB toolbox (X. Zhang et al., CVPRW 2020), as noted per
function. Where papers disagree (summed or averaged VIF/SSIM, MI in bits or nats, PSNR peak) the alternative is a
keyword option and a named variant in :data:`METRICS` (``VIF-sum``, ``SSIM-sum``, ``MI-nats``, ``PSNR-max``).

Every metric here is "higher is better" (:data:`HIGHER_IS_BETTER`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as nnf

Reduction = Literal["mean", "sum"]
SourcesLike = torch.Tensor | Sequence[torch.Tensor]

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "TABLE1",
    "average_gradient",
    "compute_fusion_metrics",
    "correlation_coefficient",
    "entropy",
    "ms_ssim",
    "mutual_information",
    "psnr",
    "qabf",
    "scd",
    "spatial_frequency",
    "ssim",
    "standard_deviation",
    "vif",
]


# ---------------------------------------------------------------------------------------------------------------------
# input handling


def _as_batch(image: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
    """``(H, W)`` or ``(B, 1, H, W)`` -> float64 ``(B, 1, H, W)`` and whether the input was unbatched."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(image).__name__}")
    if image.ndim == 2:
        return image.to(torch.float64)[None, None], True
    if image.ndim == 4 and image.shape[1] == 1:
        return image.to(torch.float64), False
    raise ValueError(f"{what} must be (H, W) or (B, 1, H, W), got shape {tuple(image.shape)}")


def _prepare(fused: torch.Tensor, sources: SourcesLike) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Fused ``(B, 1, H, W)`` and sources ``(B, K, H, W)`` in float64 on the fused image's device."""
    f, single = _as_batch(fused, "fused")
    if isinstance(sources, torch.Tensor):
        s = sources.to(device=f.device, dtype=torch.float64)
        if single and s.ndim == 3:
            s = s[None]
        elif single and s.ndim == 2:
            s = s[None, None]
    else:
        parts = [_as_batch(x, f"sources[{i}]")[0] for i, x in enumerate(sources)]
        if not parts:
            raise ValueError("at least one source image is needed")
        for i, p in enumerate(parts):
            if p.shape != f.shape:
                raise ValueError(f"sources[{i}] of shape {tuple(p.shape)} does not match fused {tuple(f.shape)}")
        s = torch.cat([p.to(f.device) for p in parts], dim=1)
    if s.ndim != 4 or s.shape[0] != f.shape[0] or s.shape[2:] != f.shape[2:]:
        raise ValueError(
            f"sources of shape {tuple(s.shape)} do not match fused {tuple(f.shape)}: expected (B, K, H, W) with the "
            "fused image's batch size and H, W"
        )
    return f, s, single


def _out(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def _reduce(per_source: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """``(B, K)`` -> ``(B,)`` by mean or sum over the sources."""
    if reduction == "mean":
        return per_source.mean(dim=1)
    if reduction == "sum":
        return per_source.sum(dim=1)
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    """Round to integer grey levels 0..255 (``np.uint8(np.round(x))`` for values in range)."""
    return torch.round(x).clamp(0, 255).long()


def _histogram(levels: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-image histograms ``(B, bins)`` of integer ``levels`` ``(B, ...)`` in ``[0, bins)``."""
    b = levels.shape[0]
    flat = levels.reshape(b, -1)
    offset = torch.arange(b, device=flat.device)[:, None] * bins
    counts = torch.bincount((flat + offset).reshape(-1), minlength=b * bins)
    return counts.reshape(b, bins).to(torch.float64)


def _entropy_of(p: torch.Tensor, dims: tuple[int, ...], log: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``-sum p log p`` over ``dims`` with ``0 log 0 = 0``."""
    return -(p * log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=dims)


def _corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image of ``(B, H, W)`` tensors (NaN for a constant image)."""
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    yc = y - y.mean(dim=(-2, -1), keepdim=True)
    return (xc * yc).sum(dim=(-2, -1)) / torch.sqrt((xc**2).sum(dim=(-2, -1)) * (yc**2).sum(dim=(-2, -1)))


# ---------------------------------------------------------------------------------------------------------------------
# no-reference metrics (fused image only)


def entropy(fused: torch.Tensor) -> torch.Tensor:
    """EN, Shannon entropy of the grey-level histogram, in bits.

    ``EN = -sum_l p_l log2 p_l`` with ``p_l`` the fraction of pixels of level ``l`` after rounding to 0..255.
    Source: ``Evaluator.EN`` (TDFusion / CDDFuse), as in VIFB. A constant image has EN = 0; the maximum is
    8 bits.
    """
    f, single = _as_batch(fused, "fused")
    hist = _histogram(_to_levels(f), 256)
    p = hist / hist.sum(dim=1, keepdim=True)
    return _out(_entropy_of(p, (1,), torch.log2), single)


def standard_deviation(fused: torch.Tensor) -> torch.Tensor:
    """SD, population standard deviation of the fused image (contrast).

    ``SD = sqrt(mean((F - mean F)^2))``. Source: ``Evaluator.SD`` (``np.std``, CDDFuse), as in VIFB.
    """
    f, single = _as_batch(fused, "fused")
    return _out(f.flatten(1).std(dim=1, unbiased=False), single)


def spatial_frequency(fused: torch.Tensor) -> torch.Tensor:
    """SF, spatial frequency: ``sqrt(RF^2 + CF^2)``.

    ``RF^2 = mean_{i,j} (F[i, j+1] - F[i, j])^2`` (horizontal differences), ``CF^2 = mean_{i,j} (F[i+1, j] - F[i, j])^2``,
    each mean over the differences that exist. Source: ``Evaluator.SF`` (TDFusion / CDDFuse). A constant image has
    SF = 0.
    """
    f, single = _as_batch(fused, "fused")
    rf = ((f[..., :, 1:] - f[..., :, :-1]) ** 2).mean(dim=(1, 2, 3))
    cf = ((f[..., 1:, :] - f[..., :-1, :]) ** 2).mean(dim=(1, 2, 3))
    return _out(torch.sqrt(rf + cf), single)


def average_gradient(fused: torch.Tensor) -> torch.Tensor:
    """AG, average gradient: ``mean sqrt((Gx^2 + Gy^2) / 2)``.

    ``Gx, Gy`` are ``numpy.gradient``-style differences: central ``(F[j+1] - F[j-1]) / 2`` inside, one-sided at the
    borders. Source: ``Evaluator.AG`` (CDDFuse). (VIFB's ``metricsAvg_gradient`` uses forward differences on the
    ``(H-1) x (W-1)`` interior and gives slightly different values.) A constant image has AG = 0.
    """
    f, single = _as_batch(fused, "fused")
    if f.shape[-1] < 2 or f.shape[-2] < 2:
        raise ValueError(f"AG needs an image of at least 2x2 pixels, got {tuple(f.shape[-2:])}")
    gx = torch.cat(
        [f[..., :, 1:2] - f[..., :, 0:1], (f[..., :, 2:] - f[..., :, :-2]) / 2, f[..., :, -1:] - f[..., :, -2:-1]],
        dim=-1,
    )
    gy = torch.cat(
        [f[..., 1:2, :] - f[..., 0:1, :], (f[..., 2:, :] - f[..., :-2, :]) / 2, f[..., -1:, :] - f[..., -2:-1, :]],
        dim=-2,
    )
    return _out(torch.sqrt((gx**2 + gy**2) / 2).mean(dim=(1, 2, 3)), single)


# ---------------------------------------------------------------------------------------------------------------------
# metrics against the sources


def scd(fused: torch.Tensor, sources: SourcesLike) -> torch.Tensor:
    """SCD, sum of the correlations of differences (Aslantas & Bendes 2015), for two sources A, B.

    ``SCD = r(A, F - B) + r(B, F - A)`` with ``r`` the Pearson correlation over all pixels. Source: ``Evaluator.SCD``
    (TDFusion / CDDFuse). Range [-2, 2].
    """
    f, s, single = _prepare(fused, sources)
    if s.shape[1] != 2:
        raise ValueError(f"SCD is defined for two sources, got {s.shape[1]}")
    a, b, ff = s[:, 0], s[:, 1], f[:, 0]
    return _out(_corr(a, ff - b) + _corr(b, ff - a), single)


def _gaussian_taps(n: int) -> list[float]:
    """1-D factor of MATLAB ``fspecial('gaussian', n, n / 5)`` (as sewar and CDDFuse build it), ``n`` floats.

    The 2-D window is the outer product of these taps: the reference's "zero below eps * max" step never fires for
    these sizes (the smallest corner weight, at n = 17, is about 4e-3 of the centre), so separable filtering gives
    the same window at a fraction of the cost of a 17x17 float64 convolution.
    """
    sd = n / 5.0
    g = [math.exp(-((i - (n - 1) / 2) ** 2) / (2 * sd * sd)) for i in range(n)]
    total = math.fsum(g)
    return [v / total for v in g]


def _filter_valid(x: torch.Tensor, taps: Sequence[float]) -> torch.Tensor:
    """'valid' correlation of ``(..., H, W)`` with the separable window ``outer(taps, taps)``.

    Written as a sum of shifted slices: float64 convolutions have no fast kernel on CPU, and this is exact
    arithmetic of the same sums (up to rounding order) on any device.
    """
    n = len(taps)
    w = x.shape[-1] - n + 1
    rows = x[..., :, 0:w] * taps[0]
    for i in range(1, n):
        rows.add_(x[..., :, i : i + w], alpha=taps[i])
    h = x.shape[-2] - n + 1
    out = rows[..., 0:h, :] * taps[0]
    for i in range(1, n):
        out.add_(rows[..., i : i + h, :], alpha=taps[i])
    return out


def _vifp(ref: torch.Tensor, dist: torch.Tensor, sigma_nsq: float = 2.0) -> torch.Tensor:
    """Pixel-domain VIF of ``dist`` against ``ref``, both ``(N, 1, H, W)`` float64 -> ``(N,)``."""
    eps = 1e-10
    num = torch.zeros(ref.shape[0], dtype=torch.float64, device=ref.device)
    den = torch.zeros_like(num)
    for scale in range(1, 5):
        taps = _gaussian_taps(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            both = _filter_valid(torch.cat([ref, dist], dim=1), taps)[..., ::2, ::2]
            ref, dist = both[:, :1], both[:, 1:]
        stats = _filter_valid(torch.cat([ref, dist, ref * ref, dist * dist, ref * dist], dim=1), taps)
        mu1, mu2 = stats[:, 0:1], stats[:, 1:2]
        sigma1_sq = stats[:, 2:3] - mu1 * mu1
        sigma2_sq = stats[:, 3:4] - mu2 * mu2
        sigma12 = stats[:, 4:5] - mu1 * mu2
        zero = torch.zeros_like(sigma1_sq)
        sigma1_sq = torch.where(sigma1_sq < 0, zero, sigma1_sq)
        sigma2_sq = torch.where(sigma2_sq < 0, zero, sigma2_sq)
        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        flat1 = sigma1_sq < eps
        g = torch.where(flat1, zero, g)
        sv_sq = torch.where(flat1, sigma2_sq, sv_sq)
        sigma1_sq = torch.where(flat1, zero, sigma1_sq)
        flat2 = sigma2_sq < eps
        g = torch.where(flat2, zero, g)
        sv_sq = torch.where(flat2, zero, sv_sq)
        neg = g < 0
        sv_sq = torch.where(neg, sigma2_sq, sv_sq)
        g = torch.where(neg, zero, g)
        sv_sq = torch.where(sv_sq <= eps, torch.full_like(sv_sq, eps), sv_sq)
        num = num + torch.log10(1 + g * g * sigma1_sq / (sv_sq + sigma_nsq)).sum(dim=(1, 2, 3))
        den = den + torch.log10(1 + sigma1_sq / sigma_nsq).sum(dim=(1, 2, 3))
    return num / den


def vif(
    fused: torch.Tensor, sources: SourcesLike, reduction: Reduction = "mean", sigma_nsq: float = 2.0
) -> torch.Tensor:
    """VIF, pixel-domain visual information fidelity "VIFP" (Sheikh & Bovik 2006), averaged over the sources.

    For each source S as reference, over 4 scales with Gaussian windows of N = 17, 9, 5, 3 taps (sigma N / 5, each
    scale low-passed and subsampled by 2), with local variances ``s_S^2, s_F^2``, covariance ``s_SF`` (valid windows),
    gain ``g = s_SF / s_S^2`` and ``s_v^2 = s_F^2 - g s_SF`` (clamped as in the reference)::

        VIFP(S, F) = sum log10(1 + g^2 s_S^2 / (s_v^2 + sigma_n^2)) / sum log10(1 + s_S^2 / sigma_n^2)

    with ``sigma_n^2 = 2``. ``VIF = mean_S VIFP(S, F)`` (``reduction="mean"``, TDFusion's ``Evaluator.VIFF``, which calls
    ``sewar.full_ref.vifp``); ``reduction="sum"`` gives the sum used by CDDFuse's evaluator and some papers' tables.
    NaN when a source is constant (the ratio is 0/0 there).
    """
    f, s, single = _prepare(fused, sources)
    b, k = s.shape[:2]
    ref = s.reshape(b * k, 1, *s.shape[2:])
    dist = f.expand(b, k, *f.shape[2:]).reshape(b * k, 1, *f.shape[2:])
    if min(f.shape[-2:]) < 41:
        raise ValueError(f"VIF needs images of at least 41x41 pixels for its 4 scales, got {tuple(f.shape[-2:])}")
    return _out(_reduce(_vifp(ref, dist, sigma_nsq).reshape(b, k), reduction), single)


_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]], dtype=torch.float64)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)


def _sobel_strength_angle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge strength and orientation of ``(N, 1, H, W)``: ``scipy.signal.convolve2d(x, h, 'same')`` with Sobel ``h``."""
    # convolve2d is a true convolution: correlate with the kernels flipped; 'same' = zero padding of 1.
    kernels = torch.stack([_SOBEL_X.flip(0, 1), _SOBEL_Y.flip(0, 1)])[:, None].to(x.device)
    resp = nnf.conv2d(x, kernels, padding=1)
    sx, sy = resp[:, :1], resp[:, 1:]
    g = torch.sqrt(sx * sx + sy * sy)
    nonzero = sx != 0
    a = torch.where(nonzero, torch.atan(sy / torch.where(nonzero, sx, torch.ones_like(sx))), math.pi / 2)
    return g, a


def _qaf(g_s: torch.Tensor, a_s: torch.Tensor, g_f: torch.Tensor, a_f: torch.Tensor) -> torch.Tensor:
    """Edge preservation ``Q^{SF}`` per pixel with the usual constants (Xydeas & Petrovic 2000)."""
    tg, kg, dg = 0.9994, -15.0, 0.5
    ta, ka, da = 0.9879, -22.0, 0.8
    one = torch.ones_like(g_s)
    # Relative strength min/max; where both are equal the reference stores g_F itself (0 where both are 0).
    ratio = torch.where(g_s > g_f, g_f / torch.where(g_s > g_f, g_s, one), g_s / torch.where(g_s < g_f, g_f, one))
    gaf = torch.where(g_s == g_f, g_f, ratio)
    aaf = 1 - torch.abs(a_s - a_f) / (math.pi / 2)
    qg = tg / (1 + torch.exp(kg * (gaf - dg)))
    qa = ta / (1 + torch.exp(ka * (aaf - da)))
    return qg * qa


def qabf(fused: torch.Tensor, sources: SourcesLike) -> torch.Tensor:
    """Q^AB/F, gradient-based fusion performance (Xydeas & Petrovic 2000).

    Sobel strength ``g`` and orientation ``a = arctan(s_y / s_x)`` (``pi/2`` where ``s_x = 0``) of every image;
    per source, ``Q^SF = Q_g Q_a`` with ``Q_g = 0.9994 / (1 + exp(-15 (G^SF - 0.5)))``,
    ``Q_a = 0.9879 / (1 + exp(-22 (A^SF - 0.8)))``, ``G^SF`` the ratio of the smaller to the larger strength and
    ``A^SF = 1 - |a_S - a_F| / (pi/2)``; then ``Q^AB/F = sum_S sum_px Q^SF g_S / sum_S sum_px g_S``. Source:
    ``Evaluator.Qabf`` (TDFusion / CDDFuse), including its handling of equal strengths. Works for any number of sources.
    """
    f, s, single = _prepare(fused, sources)
    b, k = s.shape[:2]
    g_s, a_s = _sobel_strength_angle(s.reshape(b * k, 1, *s.shape[2:]))
    g_f, a_f = _sobel_strength_angle(f)
    g_s = g_s.reshape(b, k, *s.shape[2:])
    a_s = a_s.reshape(b, k, *s.shape[2:])
    q = _qaf(g_s, a_s, g_f, a_f)
    return _out((q * g_s).sum(dim=(1, 2, 3)) / g_s.sum(dim=(1, 2, 3)), single)


def _ssim_uniform(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 7) -> torch.Tensor:
    """``skimage.metrics.structural_similarity`` with its defaults (7x7 uniform window, sample covariance,
    K1 = 0.01, K2 = 0.03), mean over the windows that fit inside the image; ``(N, 1, H, W)`` -> ``(N,)``."""
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1)

    taps = [1.0 / win_size] * win_size

    def box(t: torch.Tensor) -> torch.Tensor:
        return _filter_valid(t, taps)

    ux, uy = box(x), box(y)
    vx = cov_norm * (box(x * x) - ux * ux)
    vy = cov_norm * (box(y * y) - uy * uy)
    vxy = cov_norm * (box(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def ssim(
    fused: torch.Tensor, sources: SourcesLike, reduction: Reduction = "mean", quantize: bool = True
) -> torch.Tensor:
    """SSIM (Wang et al. 2004) between the fused image and each source, averaged over the sources.

    ``SSIM(x, y) = mean_w (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` over all 7x7
    windows inside the image (uniform weights, sample covariance), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = 255``:
    ``skimage.metrics.structural_similarity`` on uint8 images, as TDFusion's ``Evaluator.SSIM`` computes it
    (``quantize=True`` truncates to integers like its ``np.uint8`` cast). ``reduction="sum"`` gives the summed form
    of CDDFuse's evaluator. ``SSIM(x, x) = 1``.
    """
    f, s, single = _prepare(fused, sources)
    if quantize:
        f, s = f.clamp(0, 255).trunc(), s.clamp(0, 255).trunc()
    b, k = s.shape[:2]
    if min(f.shape[-2:]) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7 pixels, got {tuple(f.shape[-2:])}")
    x = f.expand(b, k, *f.shape[2:]).reshape(b * k, 1, *f.shape[2:])
    y = s.reshape(b * k, 1, *s.shape[2:])
    return _out(_reduce(_ssim_uniform(x, y, 255.0).reshape(b, k), reduction), single)


def ms_ssim(fused: torch.Tensor, sources: SourcesLike, reduction: Reduction = "mean") -> torch.Tensor:
    """MS-SSIM (Wang, Simoncelli & Bovik 2003) between the fused image and each source, averaged over the sources.

    Computed by the ``pytorch_msssim`` library: 5 dyadic scales, 11-tap Gaussian window (sigma 1.5), weights
    ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, data range 255. Images must be larger than 160 pixels on their
    shorter side. ``MS-SSIM(x, x) = 1``.
    """
    try:
        from pytorch_msssim import ms_ssim as _lib_ms_ssim
    except ImportError as exc:  # declared as a dependency; a clear message if it was removed
        raise ImportError("MS-SSIM needs the 'pytorch-msssim' package: pip install pytorch-msssim") from exc
    f, s, single = _prepare(fused, sources)
    if min(f.shape[-2:]) <= 160:
        raise ValueError(f"MS-SSIM needs images larger than 160 pixels on each side, got {tuple(f.shape[-2:])}")
    b, k = s.shape[:2]
    x = f.expand(b, k, *f.shape[2:]).reshape(b * k, 1, *f.shape[2:])
    y = s.reshape(b * k, 1, *s.shape[2:])
    values = _lib_ms_ssim(x, y, data_range=255.0, size_average=False).reshape(b, k)
    return _out(_reduce(values, reduction), single)


def mutual_information(
    fused: torch.Tensor, sources: SourcesLike, base: Literal["bits", "nats"] = "bits", reduction: Reduction = "sum"
) -> torch.Tensor:
    """MI, mutual information between the fused image and each source, summed over the sources.

    ``MI(S, F) = H(S) + H(F) - H(S, F)`` from the 256x256 joint histogram of grey levels (rounded to 0..255);
    ``MI = MI(A, F) + MI(B, F)``. ``base="bits"`` (log2, as VIFB's ``metricsMutinf``, though VIFB first stretches each image to 0..255) or ``"nats"`` (natural log,
    ``sklearn.metrics.mutual_info_score`` as used by CDDFuse's ``Evaluator.MI``). Symmetric in its two images.
    """
    if base == "bits":
        log: Callable[[torch.Tensor], torch.Tensor] = torch.log2
    elif base == "nats":
        log = torch.log
    else:
        raise ValueError(f"base must be 'bits' or 'nats', not {base!r}")
    f, s, single = _prepare(fused, sources)
    b, k = s.shape[:2]
    lf = _to_levels(f).expand(b, k, *f.shape[2:]).reshape(b * k, -1)
    ls = _to_levels(s).reshape(b * k, -1)
    joint = _histogram(ls * 256 + lf, 256 * 256).reshape(b * k, 256, 256)
    p = joint / joint.sum(dim=(1, 2), keepdim=True)
    h_s = _entropy_of(p.sum(dim=2), (1,), log)
    h_f = _entropy_of(p.sum(dim=1), (1,), log)
    h_sf = _entropy_of(p, (1, 2), log)
    return _out(_reduce((h_s + h_f - h_sf).reshape(b, k), reduction), single)


def psnr(fused: torch.Tensor, sources: SourcesLike, peak: Literal["255", "max"] = "255") -> torch.Tensor:
    """PSNR of the fused image against the sources: ``10 log10(P^2 / MSE)``, MSE averaged over the sources.

    ``MSE = mean_S mean((S - F)^2)``. ``peak="255"``: ``P = 255`` (VIFB); ``peak="max"``:
    ``P = max(F)`` (CDDFuse's ``Evaluator.PSNR``). Infinite when the fused image equals every source.
    """
    f, s, single = _prepare(fused, sources)
    mse = ((s - f) ** 2).mean(dim=(2, 3)).mean(dim=1)
    if peak == "255":
        p = torch.full_like(mse, 255.0)
    elif peak == "max":
        p = f.flatten(1).amax(dim=1)
    else:
        raise ValueError(f"peak must be '255' or 'max', not {peak!r}")
    return _out(10 * torch.log10(p * p / mse), single)


def correlation_coefficient(fused: torch.Tensor, sources: SourcesLike) -> torch.Tensor:
    """CC, Pearson correlation between the fused image and each source, averaged: ``(r(A, F) + r(B, F)) / 2``.

    Source: ``Evaluator.CC`` (CDDFuse), the same average as VIFB's CC. Range [-1, 1].
    """
    f, s, single = _prepare(fused, sources)
    return _out(_corr(s, f.expand_as(s)).mean(dim=1), single)


# ---------------------------------------------------------------------------------------------------------------------
# registry

MetricFn = Callable[[torch.Tensor, SourcesLike], torch.Tensor]


def _no_ref(fn: Callable[[torch.Tensor], torch.Tensor]) -> MetricFn:
    @functools.wraps(fn)
    def wrapped(fused: torch.Tensor, sources: SourcesLike) -> torch.Tensor:
        return fn(fused)

    return wrapped


#: Metric name -> ``fn(fused, sources) -> values``. The first six are the paper's Table 1; ``*-sum``, ``MI-nats`` and
#: ``PSNR-max`` are the alternative definitions other papers report.
METRICS: dict[str, MetricFn] = {
    "EN": _no_ref(entropy),
    "SF": _no_ref(spatial_frequency),
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim,
    "SD": _no_ref(standard_deviation),
    "AG": _no_ref(average_gradient),
    "MI": mutual_information,
    "PSNR": psnr,
    "CC": correlation_coefficient,
    "MS-SSIM": ms_ssim,
    "VIF-sum": functools.partial(vif, reduction="sum"),
    "SSIM-sum": functools.partial(ssim, reduction="sum"),
    "MI-nats": functools.partial(mutual_information, base="nats"),
    "PSNR-max": functools.partial(psnr, peak="max"),
}

#: The paper's Table 1 metrics, in its order.
TABLE1: tuple[str, ...] = ("EN", "SF", "SCD", "VIF", "Qabf", "SSIM")

#: Direction of every metric: ``True`` when a larger value means a better fusion. All of them are; the table exists so
#: reports never have to guess (and a metric added later states its direction here).
HIGHER_IS_BETTER: dict[str, bool] = dict.fromkeys(METRICS, True)


def compute_fusion_metrics(
    fused: torch.Tensor,
    sources: SourcesLike,
    names: Sequence[str] | None = None,
    value_range: float = 255.0,
) -> dict[str, torch.Tensor]:
    """Compute several metrics: ``{name: values}`` with values ``(B,)`` (or 0-d for ``(H, W)`` input).

    ``names`` defaults to :data:`TABLE1`; unknown names raise a ``KeyError`` listing the known ones. ``value_range``
    is the maximum of the input scale (255 for 8-bit values, 1 for images in [0, 1]); inputs are rescaled to 0..255.
    """
    names = list(TABLE1 if names is None else names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown fusion metric(s) {unknown}; known: {', '.join(METRICS)}")
    scale = 255.0 / value_range
    f = fused.to(torch.float64) * scale
    s: SourcesLike = (
        sources.to(torch.float64) * scale
        if isinstance(sources, torch.Tensor)
        else [x.to(torch.float64) * scale for x in sources]
    )
    return {name: METRICS[name](f, s) for name in names}
