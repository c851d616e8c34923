"""The runaway-repetition check on translations: the fast scan finds exactly what the
plain regex (which backtracks through every start and unit length) finds."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from familiar.translate.markdown.restore import _repeated_substring

REFERENCE = re.compile(r"(.{8,200}?)\1{5,}", re.S)

pieces = st.one_of(
    st.text(alphabet="abあい .", min_size=1, max_size=12),
    st.builds(
        lambda u, n: u * n, st.text(alphabet="abあい .", min_size=1, max_size=30), st.integers(2, 8)
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(pieces, max_size=30).map("".join))
def test_the_scan_agrees_with_the_reference_regex(text: str) -> None:
    assert (_repeated_substring(text) is not None) == (REFERENCE.search(text) is not None)


def test_a_stuck_model_is_caught_and_prose_is_not() -> None:
    stuck = "The tea is ready. " + "Pour the water slowly. " * 8
    found = _repeated_substring(stuck)
    assert found is not None and found.startswith("runaway repetition of ")
    assert _repeated_substring("Pour the water slowly. " * 5) is None  # five is not a loop
    prose = "お湯を沸かして、少し冷ましてから茶葉に注ぎます。熱すぎるお湯は苦味の原因になります。"
    assert _repeated_substring(prose * 3) is None
