"""The search mode's options (``--mode``, ``--lexical-weight``, ``--fusion``), one definition for every command
that ranks as ``hbt.search.SearchMode`` ranks: hbt-search and hbt-bench accuracy. The queries' language is not
among them: hbt-search takes it as ``--query-lang``, hbt-bench accuracy knows each question's."""

from __future__ import annotations

import click

MODES_HELP = ("dense: the encoder's vectors; lexical: BM25 over the bundle tokenizer's pieces (any script, Chinese, "
              "Japanese and Thai included); hybrid: both, fused. auto: hybrid when the queries' language is known and "
              "the search is restricted to exactly that language, dense otherwise, as measured: within one language "
              "hybrid gains (+.026 mAP on MLQA-R, +.029 with the recipe), across languages it loses (-.004 on MLQA-R, "
              "-.009 on XQuAD-R).")


def mode_options(default: str, help_prefix: str = ""):
    """``--mode`` (default ``default``) and hybrid's ``--lexical-weight`` and ``--fusion``, with
    ``SearchMode``'s defaults (kept equal to it by tests/test_eval.py, so that --help loads no numpy)."""
    def decorate(command):
        options = [
            click.option("--mode", type=click.Choice(["auto", "dense", "lexical", "hybrid"]), default=default,
                         show_default=True, help=help_prefix + MODES_HELP),
            click.option("--lexical-weight", type=click.FloatRange(0, 1), default=0.3, show_default=True,
                         help="Hybrid: the lexical side's weight in the convex fusion of min-max normalized scores."),
            click.option("--fusion", type=click.Choice(["convex", "rrf"]), default="convex", show_default=True,
                         help="Hybrid: convex combination of scores, or reciprocal rank fusion (measured worse "
                              "everywhere)."),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
