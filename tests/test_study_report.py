"""Every figure that the study's report.md quotes is in its own source: the results regenerated from the committed
record, or, in a section or paragraph about them, the results of the runs before it kept beside them. README's
paragraph on the study quotes them too."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "bench" / "reports" / "hybrid-study"
RECORD, FIRST_RUNS, EARLIER = STUDY, STUDY / "first-runs", STUDY / "earlier-full-set"
EVERY_SOURCE = (RECORD, FIRST_RUNS, EARLIER)
# A section headed for the runs whose record was not committed quotes their results alone.
SECTION_SOURCES = {"## First runs": (FIRST_RUNS,), "## The earlier study": (EARLIER,)}
# Elsewhere a paragraph quotes the record, and those runs' results only where it names them.
NAMES_THE_OTHERS = re.compile(r"first\s+runs?|earlier", re.I)
# A figure: optional sign, digits with thousands commas and/or decimals (".660" counts); not part of a word
# (fp32, e5, s0, 2408.10536 in a link are left out with the code and the links).
FIGURE = re.compile(r"(?<![\w.\-−/])([+−-]?)((?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?)(?![\w.]*\w)")


def prose(markdown: str) -> str:
    """The text a reader takes figures from: no code blocks, code spans or link targets."""
    markdown = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    markdown = re.sub(r"`[^`]*`", " ", markdown)
    return re.sub(r"\]\([^)]*\)", "]", markdown)


def sourced_paragraphs(report: str) -> list[tuple[str, tuple[Path, ...]]]:
    """Each paragraph (a list item is one) of ``report`` with the result folders its figures may come from."""
    found, own = [], (RECORD,)
    for block in re.split(r"(?m)^(## .*)$", prose(report)):
        if block.startswith("## "):
            own = next((folders for head, folders in SECTION_SOURCES.items() if block.startswith(head)), (RECORD,))
            continue
        for paragraph in filter(str.strip, re.split(r"\n\s*\n|\n(?=\s*[-*] )", block)):
            named = own == (RECORD,) and NAMES_THE_OTHERS.search(paragraph)
            found.append((paragraph, EVERY_SOURCE if named else own))
    return found


def unsupported_in_report(check: Callable[[str, list], list[str]], known_in: Callable[[Path], list]) -> list[str]:
    """What ``check`` finds in each paragraph of report.md against what its sources give (``known_in`` a folder)."""
    known = {folder: known_in(folder) for folder in EVERY_SOURCE}
    return [missing for paragraph, folders in sourced_paragraphs((STUDY / "report.md").read_text())
            for missing in check(paragraph, [k for folder in folders for k in known[folder]])]


def figures(text: str) -> list[tuple[str, float, int]]:
    """(as written, value, decimals) of every figure: signed where the text gives a sign."""
    found = []
    for sign, number in FIGURE.findall(text):
        if not number or not any(c.isdigit() for c in number):
            continue
        value = float(number.replace(",", ""))
        decimals = len(number.split(".")[1]) if "." in number else 0
        found.append((sign + number, -value if sign in "−-" and sign else value, decimals))
    return found


def sources(folder: Path) -> list[float]:
    numbers = [value for _, value, _ in figures((folder / "results.md").read_text())]

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(key)
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield float(node)
        elif isinstance(node, str):
            yield from (value for _, value, _ in figures(node))

    return numbers + list(walk(json.loads((folder / "results.json").read_text())))


def unsourced(report: str, known: list[float]) -> list[str]:
    """Figures of ``report`` that no known number gives at the precision written (unsigned figures: either sign)."""
    missing = []
    for written, value, decimals in figures(prose(report)):
        if decimals == 0 and abs(value) < 100:  # counts: seeds, steps of a schedule, cores, languages
            continue
        signed = written[0] in "+−-"
        if not any(abs(round(k if signed else abs(k), decimals) - (value if signed else abs(value))) < 1e-9 for k in known):
            missing.append(written)
    return missing


# A difference and its interval as the report writes them: "+0.010 [−0.002, +0.022]".
INTERVAL = re.compile(r"([+−-]?\d*\.\d+) \[([+−-]?\d*\.\d+), ([+−-]?\d*\.\d+)\]")


def compared(folder: Path) -> list[tuple[float, float, float]]:
    """(difference, low, high) of every comparison's intervals in ``folder``'s results.json."""
    found = json.loads((folder / "results.json").read_text()).get("comparisons", [])
    return [(c["difference"], c[kind]["low"], c[kind]["high"]) for c in found for kind in ("question", "hierarchical")]


def unmatched_intervals(report: str, known: list[tuple[float, float, float]]) -> list[str]:
    """Differences with intervals in ``report`` that no one comparison gives, all three at the precision written."""
    missing = []
    for match in INTERVAL.finditer(prose(report)):
        written = [(float(t.replace("−", "-")), len(t.split(".")[1])) for t in match.groups()]
        if not any(all(abs(round(k, d) - v) < 1e-9 for k, (v, d) in zip(triple, written)) for triple in known):
            missing.append(match.group(0))
    return missing


def test_the_check_finds_an_invented_figure_and_accepts_a_quoted_one():
    known = [0.6601, -0.0071, 1548.2]
    assert unsourced("mono .660, a loss of .007 (−.007), bias 1548, in `code 0.999`", known) == []
    assert unsourced("mono .661 and +.007 and bias 1,549 [link](http://x/0.5)", known) == [".661", "+.007", "1,549"]


def test_a_paragraph_draws_on_the_earlier_runs_only_where_it_names_them():
    report = "Record .5.\n\nThe first\nruns gave .6.\n- and .7\n\n## First runs: recipe 1\n\nThey gave .8.\n"
    assert [folders for _, folders in sourced_paragraphs(report)] == [
        (RECORD,), EVERY_SOURCE, (RECORD,), (FIRST_RUNS,)]


def test_every_figure_in_the_report_has_a_committed_source():
    missing = unsupported_in_report(unsourced, sources)
    assert not missing, f"figures in report.md that their paragraph's sources do not give: {missing}"


def test_the_interval_check_wants_the_difference_and_both_ends_from_one_comparison():
    known = [(0.0101, -0.0021, 0.0224), (0.5, -0.003, 0.9)]
    assert unmatched_intervals("mono +0.010 [−0.002, +0.022] and bias −611.3 [−678.4, −544.7]",
                               known + [(-611.31, -678.42, -544.66)]) == []
    assert unmatched_intervals("mono +0.010 [−0.003, +0.022]", known) == ["+0.010 [−0.003, +0.022]"]


def test_every_interval_in_the_report_is_one_comparison_of_the_results():
    """A quoted interval's ends and its difference come from the same comparison, not three figures found apart."""
    missing = unsupported_in_report(unmatched_intervals, compared)
    assert not missing, f"intervals in report.md that no comparison in results.json gives: {missing}"


def test_the_readme_quotes_the_study_from_its_results():
    """README's paragraph on the study names the first runs, so any of the study's results may be its source."""
    paragraphs = re.split(r"\n\s*\n", prose((ROOT / "README.md").read_text()))
    paragraph = next(p for p in paragraphs if "The study is rebuilt" in p)
    known = [k for folder in EVERY_SOURCE for k in sources(folder)]
    triples = [t for folder in EVERY_SOURCE for t in compared(folder)]
    missing = unsourced(paragraph, known) + unmatched_intervals(paragraph, triples)
    assert not missing, f"figures or intervals in README's study paragraph that no study result gives: {missing}"
