"""The book's exercise cells come from the catalogue: every chapter holds each exercise's five cells
exactly as capslib.exercises.exercise_cells makes them, at the end of its section, and
scripts/sync_exercise_cells.py --check finds nothing to rewrite."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from capslib import exercises as E

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = list(E.EXERCISES.values())


def test_cells_and_draft():
    labels = set()
    for ex in EXERCISES:
        cells = E.exercise_cells(ex.id)
        assert [c[0] for c in cells] == ["markdown", "code", "code", "markdown", "markdown"]
        assert f"(exercise-{ex.slug})=" in cells[0][1] and f":label: {ex.label}" in cells[0][1]
        assert ex.task in cells[0][1] and ex.contract() in cells[0][1]
        assert cells[1][1] == ex.stub
        assert cells[2][1] == f"from capslib.exercises import {ex.checker}\n{ex.checker}({ex.func})"
        assert "{exercise-end}" in cells[3][1]
        assert f"{{solution}} {ex.label}" in cells[4][1] and ":class: dropdown" in cells[4][1]
        assert ex.solution.strip() in cells[4][1]
        labels |= {ex.label, f"sol-{ex.slug}", f"exercise-{ex.slug}"}
    assert len(labels) == 3 * len(EXERCISES)
    page = E.exercises_page_markdown()
    for ex in EXERCISES:
        assert f"<exercise-{ex.slug}>`" in page
    draft = ROOT / "book" / "_exercise_cells.md"
    assert draft.read_text() == E.draft_markdown() + "\n", \
        "regenerate: python scripts/sync_exercise_cells.py (or python -m capslib.exercises > book/_exercise_cells.md)"


def test_sync_script_finds_nothing_to_rewrite():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_exercise_cells.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _load_sync_script():
    # The book-syncing script's own markdown reading, so the test and the script cannot disagree.
    spec = importlib.util.spec_from_file_location("sync_exercise_cells", ROOT / "scripts" / "sync_exercise_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNC = _load_sync_script()


def _cells(name):
    nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text())
    return [(c["cell_type"], SYNC.source_of(c), c.get("metadata", {})) for c in nb["cells"]]


def _headings(source):
    """The heading lines of a markdown cell, fenced code blocks skipped, as text without the #s."""
    return [text for _, text in SYNC.headings(source)]


def _looks_like_exercise(cell):
    kind, source, meta = cell
    return (any(t.startswith("exercise-") for t in meta.get("tags", []))
            or any(d in source for d in ("{exercise-start}", "{exercise-end}", "{solution}")))


CHAPTERS_WITH_EXERCISES = sorted({ex.chapter for ex in EXERCISES})


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_EXERCISES)
def test_chapter_holds_its_exercises_verbatim_at_the_end_of_their_sections(chapter):
    """Each exercise's 5 cells are in its chapter exactly as exercise_cells(id) makes them (so the
    notebook cannot drift from its checker), once, in id order, at the end of ex.section."""
    cells = _cells(chapter)
    claimed, starts = set(), []
    for ex in (ex for ex in EXERCISES if ex.chapter == chapter):
        want = E.exercise_cells(ex.id)
        at = [k for k, c in enumerate(cells) if c[:2] == want[0][:2]]
        assert len(at) == 1, (f"{chapter}: exercise {ex.id} appears {len(at)} times — run "
                              f"python scripts/sync_exercise_cells.py")
        k = at[0]
        for n, (kind, source, meta) in enumerate(want):
            got = cells[k + n] if k + n < len(cells) else (None, None, {})
            assert got[:2] == (kind, source), (f"{chapter}: cell {n + 1} of exercise {ex.id} differs from "
                                               f"exercise_cells({ex.id!r}) — run python scripts/sync_exercise_cells.py")
            for key, value in meta.items():
                assert got[2].get(key) == value, f"{chapter}: exercise {ex.id}, cell {n + 1}: metadata {key!r}"
        claimed |= set(range(k, k + len(want)))
        starts.append((k, ex))
        above = [h for c in cells[:k] if c[0] == "markdown" and not _looks_like_exercise(c) for h in _headings(c[1])]
        assert above and above[-1] == ex.section, (f"{chapter}: exercise {ex.id} sits under {above[-1:]}, "
                                                   f"but its section is {ex.section!r}")
        after = k + len(want)
        while after < len(cells) and _looks_like_exercise(cells[after]):
            after += 1
        if after < len(cells):
            first_line = cells[after][1].lstrip("\n").split("\n")[0]
            assert cells[after][0] == "markdown" and _headings(first_line), (
                f"{chapter}: exercise {ex.id} is not at the end of its section: the next cell does not start "
                f"with a heading")
    assert [ex.id for _, ex in sorted(starts, key=lambda t: t[0])] == [ex.id for _, ex in starts], \
        f"{chapter}: exercises out of id order"
    strays = [k for k, c in enumerate(cells) if _looks_like_exercise(c) and k not in claimed]
    assert not strays, f"{chapter}: cells {strays} look like exercise cells of no exercise in capslib.exercises"


def test_no_exercise_cells_in_other_chapters():
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        if path.stem in CHAPTERS_WITH_EXERCISES or path.stem == "exercises":
            continue
        assert not any(_looks_like_exercise(c) for c in _cells(path.stem)), path.name


def test_exercises_page_lists_every_exercise():
    path = ROOT / "book" / "exercises.ipynb"
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert text.strip() == E.exercises_page_markdown().strip(), \
        "book/exercises.ipynb is stale: run python scripts/sync_exercise_cells.py"
    for ex in EXERCISES:
        assert f"| {ex.id} | {{ref}}`{ex.title} <exercise-{ex.slug}>`" in text, ex.id
        assert f"({ex.chapter}.ipynb)" in text, ex.chapter


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda ex: ex.id)
def test_stub_cell_prints_only_the_not_implemented_block(ex, capsys):
    """What the built book shows under each check cell: the "not implemented yet" block, no stderr."""
    ns = {}
    exec(ex.stub, ns)                                      # noqa: S102 — the book's own stub
    exec(E.exercise_cells(ex.id)[2][1], ns)                # the check cell, as the notebook runs it
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.startswith(f"… {ex.heading}: not implemented yet.") and "Traceback" not in out.out
