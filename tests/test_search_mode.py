"""SearchMode's rule for auto: hybrid only for queries searched in their own language alone, for every input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbt.errors import DataError
from hbt.index.lexical import LEXICAL_FILE
from hbt.search import MODES, SearchMode, as_mode

CODES = ["de", "en", "zh", "sw"]


def snapshot(lexical: list[bool]) -> SimpleNamespace:
    """What resolve reads of an index snapshot: its manifest's segments, each with or without a lexical part."""
    segments = [SimpleNamespace(files={"vectors.npy": {}} | ({LEXICAL_FILE: {}} if has else {})) for has in lexical]
    return SimpleNamespace(manifest=SimpleNamespace(segments=segments))


@given(query_lang=st.none() | st.sampled_from(CODES), langs=st.none() | st.lists(st.sampled_from(CODES), max_size=3),
       lexical=st.lists(st.booleans(), min_size=1, max_size=3))
def test_auto_fuses_only_queries_searched_in_their_own_language_alone(query_lang, langs, lexical):
    index = snapshot(lexical)
    mode = SearchMode(query_lang=query_lang)
    searched_alone = query_lang is not None and bool(langs) and all(lang == query_lang for lang in langs)
    expected = "hybrid" if searched_alone and all(lexical) else "dense"
    assert mode.resolve(langs, index) == expected
    assert mode.describe(expected).startswith(f"mode {expected}")
    if query_lang is None:
        assert mode.describe(expected).endswith("by auto (query language not given)")
    for other in MODES[1:]:  # the explicit modes run as asked, the query's language or not
        assert SearchMode(other, query_lang=query_lang).resolve(langs, index) == other


def test_the_query_language_travels_with_the_mode_and_is_a_code():
    assert as_mode("auto", "de") == SearchMode(query_lang="de")
    assert as_mode(SearchMode("hybrid", 0.5, query_lang="en"), None).query_lang == "en"
    assert as_mode(None).query_lang is None
    for blank in ("", "  "):
        with pytest.raises(DataError, match="query language .*: give a language code"):
            SearchMode(query_lang=blank)
