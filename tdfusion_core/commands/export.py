"""``tdfusion export``: write the fusion network F as ONNX or TorchScript (dynamic height and width)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tdfusion_core import hookimpl


@click.command(name="export")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="model.pt of a run, or a published ReFusion/TDFusion state dict (.pth).",
)
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (default: the checkpoint's name with .onnx / .torchscript.pt).",
)
@click.option("--opset", type=click.IntRange(min=11), default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--check",
    "check_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder with ir/ and vi/ pairs: run the exported model on them (onnxruntime / torch.jit, CPU) and compare "
    "with PyTorch.",
)
@click.option("--check-limit", type=click.IntRange(min=1), help="Compare on the first N pairs only.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Largest allowed |difference|.")
def export_command(
    checkpoint: Path,
    fmt: str,
    out: Path | None,
    opset: int,
    check_dir: Path | None,
    check_limit: int | None,
    tolerance: float,
) -> None:
    """Export F (sources (B, K, H, W) in [0, 1] -> fused luminance (B, 1, H, W)) for inference without tdfusion."""
    from tdfusion_core.apps.export import ExportError, check_export, export_fusion_net, read_pairs
    from tdfusion_core.training.checkpoints import CheckpointError

    if out is None:
        out = checkpoint.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")
    try:
        path = export_fusion_net(checkpoint, out, fmt, opset=opset)  # type: ignore[arg-type]
        click.echo(f"wrote {path} ({fmt}, dynamic batch/height/width)")
        if check_dir is not None:
            result = check_export(checkpoint, path, read_pairs(check_dir, check_limit))
            diff = result["max_abs_diff"]
            click.echo(f"checked on {len(result['sizes'])} pair(s) of {check_dir}: max |difference| {diff:.3g}")
            if not diff <= tolerance:
                raise click.ClickException(f"the exported model differs from PyTorch by {diff:.3g} > {tolerance}")
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@hookimpl
def tdfusion_register_commands(cli: Any) -> None:
    cli.add_command(export_command)
