"""familiar.copycheck: examples are extracted from every shipped prompt, copies are
caught (verbatim or reshaped), honest answers and text the caller allows are not."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from familiar.copycheck import (
    MIN_CHARS,
    copied,
    copied_pair,
    examples,
    normalise,
    without_markers,
)
from familiar.plan import (
    INTEGRATION_SCHEMA,
    WORKER_SCHEMA,
    Integration,
    WorkerOutput,
    parse_plan,
)
from familiar.session.prompts import load_prompt

# Prompts with example blocks, as a workspace's own prompts/ may have them. Of the shipped
# session prompts only plan.md keeps one (worker and integration answers get their shape
# from JSON-schema constrained decoding, and a small base model copied their examples);
# these are the versions that had them.
PROMPTS = Path(__file__).resolve().parents[1] / "support" / "example_prompts"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "prompts"
ALL = sorted([*PROMPTS.glob("*.md"), *SHIPPED_DIR.glob("*.md")])
WITH_EXAMPLES = [p for p in ALL if "<!-- example -->" in p.read_text(encoding="utf-8")]
BLOCK = re.compile(r"<!-- example -->\n(.*?)<!-- /example -->\n", re.S)
PROPS = settings(max_examples=150, deadline=None, database=None)

TASK = "Write a short guide to brewing green tea: the steps, and the common mistakes."

HONEST = {
    "tea guide": """## Steps
1. Boil water, then let it cool to about 80 °C: boiling water scalds green tea.
2. Warm the pot and the cups with a little hot water.
3. Put one teaspoon of leaves per cup into the pot.
4. Pour the water and steep for one to two minutes.
5. Pour every last drop; the second infusion needs less time.

## Common mistakes
- Water too hot, which makes the tea bitter.
- Steeping too long.
- Too many leaves for a small pot.""",
    "tyre guide": """# Fixing a flat bicycle tyre
1. Take the wheel off and let the rest of the air out.
2. Lever one side of the tyre off the rim and pull out the inner tube.
3. Find the hole: pump a little air in and listen, or dip the tube in water.
4. Patch it, or fit a new tube, and check the inside of the tyre for thorns.
5. Refit the tyre, inflate it to the pressure printed on the sidewall, and count to
   ten before you ride: a bead that is not seated will show itself.""",
    "japanese": (
        "## 手順\n1. お湯を沸かし、80度くらいまで冷まします。\n2. 茶葉を急須に入れます。\n"
        "3. 一分ほど待ってから、最後の一滴まで注ぎます。\n\n## よくある失敗\n"
        "- お湯が熱すぎると苦くなります。"
    ),
    "quotes the task": f"You asked: {TASK} Here it is. Heat the water, add the leaves, wait.",
    "plan": json.dumps(
        {
            "goal": "A short guide to brewing green tea",
            "decisions": ["Use numbered steps", "Give temperatures in Celsius"],
            "subtasks": [
                {
                    "id": "s1",
                    "title": "Steps",
                    "instructions": "List the steps of brewing green tea, one bullet each.",
                    "acceptance": "Five numbered steps",
                    "depends_on": [],
                    "difficulty": "hard",
                },
                {
                    "id": "s2",
                    "title": "Summary",
                    "instructions": "Summarise the steps and the mistakes in two sentences.",
                    "acceptance": "Two sentences",
                    "depends_on": ["s1"],
                    "difficulty": "easy",
                },
            ],
        }
    ),
    "inventory": (
        "## Inventory counts\n- Aisle 1: 40 crates of apples\n- Aisle 2: 12 crates of pears\n\n"
        "## Shortages\nAisle 2 ran short of pears after the harvest fair."
    ),
}


def blocks(path: Path) -> list[str]:
    return [b.replace("{{", "{").replace("}}", "}") for b in BLOCK.findall(path.read_text())]


def example_json(path: Path) -> dict[str, object]:
    (block,) = blocks(path)
    obj = json.loads(block[block.index("{") : block.rindex("}") + 1])
    assert isinstance(obj, dict)
    return obj


SHIPPED = [s for p in WITH_EXAMPLES for s in examples(p.read_text(encoding="utf-8"))]


def reshape(text: str) -> str:
    """Another case, other whitespace, other Markdown list and heading markers."""
    lines = []
    for line in text.upper().splitlines():
        line = re.sub(r"^- ", "* ", line)
        line = re.sub(r"^## ", "### ", line)
        lines.append("  " + line.replace(" ", "   "))
    return "\n\n".join(lines) + "\n"


# --- prompts with examples ------------------------------------------------------------------


def test_the_prompts_with_examples_are_the_ones_expected() -> None:
    assert {p.name for p in WITH_EXAMPLES} >= {"plan.md", "worker_task.md", "integrate.md"}
    # shipped: only the planner keeps an example (the plan's structure); workers and the
    # integrator rely on JSON-schema constrained decoding for the shape of their answer
    assert {p.name for p in WITH_EXAMPLES if p.parent == SHIPPED_DIR} == {"plan.md"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_markers_are_paired_and_hold_no_template_field(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("<!-- example -->") == text.count("<!-- /example -->") == len(blocks(path))
    for block in BLOCK.findall(text):
        assert not [f for _, f, _, _ in string.Formatter().parse(block) if f]


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=lambda p: p.name)
def test_examples_are_extracted_from_every_prompt(path: Path) -> None:
    snippets = examples(path.read_text(encoding="utf-8"))
    assert snippets
    assert all(len(normalise(s)) >= MIN_CHARS for s in snippets)
    assert not [s for s in snippets if "{" in s or "}" in s or "example" in s.casefold()]


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=lambda p: p.name)
def test_no_example_is_about_anything_a_user_might_ask(path: Path) -> None:
    for block in blocks(path):
        for word in ("tea", "brew", "boil", "water", "kettle", "bicycle", "tyre"):
            assert word not in block.casefold(), (path.name, word)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("plan.md", {"task", "max_subtasks", "worker_hint"}),
        (
            "worker_task.md",
            {
                "goal",
                "decisions",
                "dependencies",
                "subtask_id",
                "title",
                "instructions",
                "acceptance",
                "revision",
            },
        ),
        ("integrate.md", {"task", "goal", "decisions", "outputs"}),
    ],
)
def test_prompts_keep_their_fields_and_render(name: str, fields: set[str], tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / name).write_bytes((PROMPTS / name).read_bytes())  # an override
    prompt = load_prompt(tmp_path, name)
    assert prompt.fields == fields
    rendered = without_markers(prompt.render(**dict.fromkeys(fields, "X")))
    assert "{{" not in rendered and "<!--" not in rendered
    assert rendered.endswith("\nAnswer:\n")
    assert "\n\n\n" not in rendered and "Zorblat" in rendered


def test_example_answers_match_the_answer_schemas() -> None:
    plan = parse_plan(json.dumps(example_json(PROMPTS / "plan.md")))
    assert [s.id for s in plan.subtasks] == ["s1", "s2", "s3"]
    worker = example_json(PROMPTS / "worker_task.md")
    assert sorted(worker) == sorted(WORKER_SCHEMA["required"])
    WorkerOutput.model_validate(worker)
    merged = example_json(PROMPTS / "integrate.md")
    assert sorted(merged) == sorted(INTEGRATION_SCHEMA["required"])
    assert Integration.model_validate(merged).violations == []


# --- copies are caught -------------------------------------------------------------------------


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=lambda p: p.name)
def test_an_example_answer_verbatim_is_flagged(path: Path) -> None:
    snippets = examples(path.read_text(encoding="utf-8"))
    whole = json.dumps(example_json(path))
    assert copied(whole, snippets) is not None  # the raw JSON answer
    for value in example_json(path).values():
        if isinstance(value, str) and len(value) >= MIN_CHARS:
            assert copied(value, snippets) == value  # the parsed field
    for snippet in snippets:
        assert copied(snippet, snippets) is not None
        assert copied(reshape(snippet), snippets) is not None
        assert copied(f"Here you are.\n\n{reshape(snippet)}\nThanks!", snippets) is not None


def test_a_copy_is_caught_across_prompts_and_the_longest_snippet_named() -> None:
    deliverable = example_json(PROMPTS / "integrate.md")["deliverable"]
    assert isinstance(deliverable, str)
    assert copied(reshape(deliverable), SHIPPED) == deliverable
    # the worker's example output is part of the deliverable: still a copy
    output = example_json(PROMPTS / "worker_task.md")["output"]
    assert isinstance(output, str)
    assert copied(output, SHIPPED) is not None


def test_a_paraphrase_sharing_most_four_grams_is_flagged() -> None:
    snippets = ["Aisle 2 ran short of Zorblats after the Quuxville fair and the big storm."]
    answer = "Aisle 2 ran short of Zorblats after the Quuxville fair, sadly."
    assert copied(answer, snippets) == snippets[0]
    assert copied("Aisle 2 ran short of Zorblats today.", snippets) is None  # < 8 words
    assert copied("Aisle 2 ran short of Zorblats, said the clerk on Monday.", snippets) is None


# --- honest answers are not --------------------------------------------------------------------


@pytest.mark.parametrize("name", HONEST)
def test_honest_answers_are_not_flagged(name: str) -> None:
    assert copied(HONEST[name], SHIPPED, allowed=TASK) is None
    assert copied(HONEST[name], SHIPPED) is None


def test_snippets_in_allowed_do_not_count() -> None:
    snippets = SHIPPED
    task = "Write the quarterly Zorblat inventory report for the Quuxville depot."
    assert copied(task, snippets) is not None
    assert copied(f"Sure. {task}", snippets, allowed=task) is None
    line = "Aisle 2 ran short of Zorblats after the Quuxville fair."
    assert copied(f"As s2 said: {line}", snippets, allowed=f"[s2] Shortages:\n{line}") is None


def test_short_and_empty_answers() -> None:
    assert copied("", SHIPPED) is None
    assert copied("Zorblat", SHIPPED) is None
    assert copied("anything", []) is None


def test_normalise() -> None:
    assert normalise("## Title\n\n- One\n* Two\n1. Three\n> 2) Four  five") == (
        "title one two three four five"
    )
    assert normalise("  MiXeD\tCase \n") == "mixed case"


# --- translation few-shot pairs ----------------------------------------------------------------

PAIRS = [
    ("⟦P0⟧ゾルブラットの歴史", "⟦P0⟧The history of Zorblats"),
    ("クークスヴィルの倉庫を見てください。", "See the Quuxville depot."),
]


def test_copied_pair_flags_an_example_target_for_another_source() -> None:
    assert copied_pair("⟦P0⟧The history of Zorblats", "⟦P0⟧茶の歴史", PAIRS) == PAIRS[0][1]
    assert copied_pair("  see the QUUXVILLE depot.\n", "水を沸かします。", PAIRS) == PAIRS[1][1]


def test_copied_pair_accepts_honest_translations() -> None:
    assert copied_pair("⟦P0⟧The history of Zorblats", "⟦P0⟧ゾルブラットの歴史", PAIRS) is None
    assert copied_pair("⟦P0⟧The history of tea", "⟦P0⟧茶の歴史", PAIRS) is None
    assert copied_pair("", "何か", PAIRS) is None


def test_copied_pair_works_on_the_shipped_fewshot_examples() -> None:
    from familiar.translate.formats import FEWSHOT_EXAMPLES

    for pairs in FEWSHOT_EXAMPLES.values():
        for source, target in pairs:
            assert copied_pair(target, source + " (another text)", pairs) == target
            assert copied_pair(target, source, pairs) is None


# --- properties ---------------------------------------------------------------------------------

SNIPPETS = st.sampled_from(SHIPPED)
HONEST_TEXT = st.lists(st.sampled_from(list(HONEST.values())), min_size=1, max_size=3).map(
    "\n\n".join
)


@PROPS
@given(SNIPPETS, HONEST_TEXT, st.booleans())
def test_a_snippet_anywhere_in_an_answer_is_flagged(
    snippet: str, honest: str, reshaped: bool
) -> None:
    piece = reshape(snippet) if reshaped else snippet
    assert copied(f"{honest}\n\n{piece}\n\n{honest}", SHIPPED) is not None


@PROPS
@given(SNIPPETS, HONEST_TEXT)
def test_a_snippet_the_caller_allows_is_not_flagged(snippet: str, honest: str) -> None:
    assert copied(f"{honest}\n\n{snippet}", SHIPPED, allowed=f"{TASK}\n{snippet}") is None


@PROPS
@given(HONEST_TEXT, st.sampled_from([" ", "\n", "\t", "  \n "]), st.booleans())
def test_honest_text_in_any_shape_is_not_flagged(honest: str, space: str, upper: bool) -> None:
    text = space.join(honest.split(" "))
    assert copied(text.upper() if upper else text, SHIPPED, allowed=TASK) is None
