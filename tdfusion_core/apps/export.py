"""Export of the fusion network F to ONNX or TorchScript, for inference without tdfusion.

The exported model maps sources ``(B, K, H, W)`` (luminance in [0, 1]; K = 2 for infrared, visible) to F's fused
luminance ``(B, 1, H, W)``, for any height and width (dynamic axes): when F declares ``size_multiple > 1`` the model
pads the input by edge replication to a multiple and crops the result back, as ``tdfusion fuse`` does. The
post-processing of ``tdfusion fuse`` (clamp or min-max stretch, colour rebuilt from the visible chroma) is not part
of the model.

:func:`check_export` runs the exported file (onnxruntime on the CPU, or ``torch.jit.load``) against F in PyTorch
and returns the largest absolute difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as nnf

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")


class ExportError(RuntimeError):
    """An export that cannot be done (missing package, unsupported network)."""


class PaddedFusion(nn.Module):
    """F with its input padded (edge replication) to a multiple of ``multiple`` and the output cropped back."""

    def __init__(self, fusion_net: nn.Module, multiple: int = 1) -> None:
        super().__init__()
        self.fusion_net = fusion_net
        self.multiple = int(multiple)

    def forward(self, sources: torch.Tensor) -> torch.Tensor:
        if self.multiple <= 1:
            out: torch.Tensor = self.fusion_net(sources)
            return out
        h, w = sources.shape[-2], sources.shape[-1]
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        fused: torch.Tensor = self.fusion_net(nnf.pad(sources, (0, pw, 0, ph), mode="replicate"))
        return fused[..., :h, :w]


def load_fusion_net(checkpoint: str | Path) -> tuple[nn.Module, int]:
    """F of a checkpoint (our model.pt, a training checkpoint's model export, or a published ReFusion state dict)
    in eval mode on the CPU, and its number of sources."""
    from tdfusion_core.training.checkpoints import load_model_checkpoint

    model = load_model_checkpoint(checkpoint)
    net = model.fusion_net.float().eval()
    return PaddedFusion(net, int(getattr(net, "size_multiple", 1) or 1)).eval(), int(model.num_sources)


def export_fusion_net(
    checkpoint: str | Path,
    out: str | Path,
    fmt: Format = "onnx",
    example_size: tuple[int, int] = (64, 80),
    opset: int = 17,
) -> Path:
    """Write F of ``checkpoint`` to ``out`` in format ``fmt`` (``onnx`` or ``torchscript``) with dynamic H and W."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    model, k = load_fusion_net(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, k, *example_size)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example, check_trace=False)  # shapes are read at run time
            traced.save(str(out))
            return out
        try:
            import onnx  # noqa: F401  (the exporter needs it)
        except ImportError as exc:
            raise ExportError("ONNX export needs the onnx package: pip install 'tdfusion-core[export]'") from exc
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["sources"],
            output_names=["fused"],
            dynamic_axes={
                "sources": {0: "batch", 2: "height", 3: "width"},
                "fused": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=opset,
            dynamo=False,
        )
    return out


def run_exported(path: str | Path, sources: torch.Tensor, fmt: Format | None = None) -> torch.Tensor:
    """Run an exported model on ``sources`` on the CPU (onnxruntime for ONNX, ``torch.jit`` for TorchScript)."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'tdfusion-core[export]'") from exc
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (fused,) = session.run(["fused"], {"sources": sources.float().numpy()})
        return torch.from_numpy(fused)
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        result: torch.Tensor = module(sources.float())
    return result


def read_pairs(folder: str | Path, limit: int | None = None) -> list[torch.Tensor]:
    """Sources ``(1, 2, H, W)`` of the pairs of a folder holding ``ir/`` and ``vi/`` (or ``vis/``) images."""
    from tdfusion_core.common.io import list_images, read_image

    folder = Path(folder)
    vis_dir = folder / "vi" if (folder / "vi").is_dir() else folder / "vis"
    ir, vis = list_images(folder / "ir"), list_images(vis_dir)
    names = sorted(set(ir) & set(vis))[:limit]
    if not names:
        raise ExportError(f"no infrared/visible pairs in {folder}/ir and {vis_dir}")
    return [torch.cat([read_image(ir[n])[0], read_image(vis[n])[0]])[None] for n in names]


def check_export(checkpoint: str | Path, exported: str | Path, inputs: list[torch.Tensor]) -> dict[str, Any]:
    """Largest absolute difference between the exported model and F in PyTorch over ``inputs`` (each
    ``(B, K, H, W)``), with the sizes checked."""
    model, _ = load_fusion_net(checkpoint)
    worst = 0.0
    sizes = []
    for x in inputs:
        with torch.no_grad():
            reference = model(x.float())
        got = run_exported(exported, x)
        if got.shape != reference.shape:
            raise ExportError(
                f"exported model returned {tuple(got.shape)} for {tuple(x.shape)}, PyTorch {tuple(reference.shape)}"
            )
        worst = max(worst, float((got - reference).abs().max()))
        sizes.append(tuple(x.shape[-2:]))
    return {"max_abs_diff": worst, "sizes": sizes}
