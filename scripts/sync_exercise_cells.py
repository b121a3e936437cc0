"""Write every exercise's cells into the book, from capslib.exercises (their single source).

    python scripts/sync_exercise_cells.py           # rewrite the chapters, the exercises page, the draft
    python scripts/sync_exercise_cells.py --check   # change nothing; exit 1 if anything is out of date

For each chapter that has exercises: removes every exercise cell (tagged ``exercise-*``, or holding a
``(exercise-…)=`` target, an ``exercise-start``/``exercise-end`` or a ``solution`` directive), then
inserts each exercise's five cells, ``capslib.exercises.exercise_cells(id)``, at the end of its
section — before the next cell that starts with a heading — in id order. A section that ends in the
middle of a markdown cell is refused (split that cell first). Also rewrites the one markdown cell of
book/exercises.ipynb and book/_exercise_cells.md. Cells get the ids ``<slug>-1`` … ``<slug>-5``; the
JSON is written as nbformat writes it (indent 1, non-ASCII kept), other cells byte for byte as they were.
Run from the repository root with capslib importable.
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from capslib import exercises as E  # noqa: E402


def headings(source):
    """The heading lines of a markdown text, fenced blocks skipped: [(line number, text)]."""
    out, fence = [], None
    for n, line in enumerate(source.split("\n")):
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None and re.match(r"#{1,6} ", line):
            out.append((n, line.lstrip("#").strip()))
    return out


def source_of(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def is_exercise_cell(cell):
    tags = cell.get("metadata", {}).get("tags", [])
    text = source_of(cell)
    return (any(t.startswith("exercise-") for t in tags) or text.startswith("(exercise-")
            or any(d in text for d in ("{exercise-start}", "{exercise-end}", "{solution}")))


def make_cell(slug, n, kind, source, meta):
    meta = json.loads(json.dumps(meta, sort_keys=True))           # nbformat's key order
    lines = source.splitlines(keepends=True)
    if kind == "code":
        return {"cell_type": "code", "execution_count": None, "id": f"{slug}-{n}", "metadata": meta,
                "outputs": [], "source": lines}
    return {"cell_type": "markdown", "id": f"{slug}-{n}", "metadata": meta, "source": lines}


def insertion_point(cells, section, chapter):
    """Index of the first cell after `section`'s heading that starts a new section (or len(cells))."""
    at = [k for k, c in enumerate(cells) if c["cell_type"] == "markdown"
          and any(h == section for _, h in headings(source_of(c)))]
    if len(at) != 1:
        raise SystemExit(f"{chapter}: section {section!r} found {len(at)} times")
    k = at[0]
    after_heading = [h for h in headings(source_of(cells[k])) if h[1] == section][0][0]
    if any(n > after_heading for n, _ in headings(source_of(cells[k]))):
        raise SystemExit(f"{chapter}: section {section!r} ends inside its own heading cell {k}: split it")
    k += 1
    while k < len(cells):
        c = cells[k]
        if c["cell_type"] == "markdown":
            hs = headings(source_of(c))
            first = source_of(c).lstrip("\n").split("\n")[0]
            if hs and headings(first):
                return k
            if hs:
                raise SystemExit(f"{chapter}: section {section!r} ends inside markdown cell {k} "
                                 f"(heading {hs[0][1]!r} is not at its start): split that cell")
        k += 1
    return k


def _key(ex):
    return tuple(int(p) for p in ex.id.split("."))


def sync_chapter(name, exercises):
    path = os.path.join(ROOT, "book", f"{name}.ipynb")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    nb = json.loads(raw)
    cells = [c for c in nb["cells"] if not is_exercise_cell(c)]
    for ex in reversed(exercises):                     # later ids first: earlier insertions stay in id order
        k = insertion_point(cells, ex.section, name)
        new = [make_cell(ex.slug, n, kind, src, meta)
               for n, (kind, src, meta) in enumerate(E.exercise_cells(ex.id), 1)]
        same_section = [e for e in exercises if e.section == ex.section and e.id > ex.id]
        if same_section:                               # put it before the already inserted later ones
            first_later = min(i for i, c in enumerate(cells) if c.get("id") == f"{same_section[0].slug}-1")
            k = first_later
        cells[k:k] = new
    nb["cells"] = cells
    return path, raw, json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def sync_page():
    path = os.path.join(ROOT, "book", "exercises.ipynb")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    nb = json.loads(raw)
    md = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    if len(md) != 1:
        raise SystemExit("book/exercises.ipynb should hold exactly one markdown cell")
    md[0]["source"] = E.exercises_page_markdown().rstrip("\n").splitlines(keepends=True)
    return path, raw, json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv):
    check = "--check" in argv
    chapters = {}
    for ex in E.EXERCISES.values():
        chapters.setdefault(ex.chapter, []).append(ex)
    outputs = [sync_chapter(name, sorted(exs, key=_key))
               for name, exs in chapters.items()]
    outputs.append(sync_page())
    draft = os.path.join(ROOT, "book", "_exercise_cells.md")
    with open(draft, encoding="utf-8") as f:
        outputs.append((draft, f.read(), E.draft_markdown() + "\n"))
    stale = [path for path, old, new in outputs if old != new]
    for path in stale:
        print(("out of date: " if check else "rewrote ") + os.path.relpath(path, ROOT))
    if not check:
        for path, old, new in outputs:
            if old != new:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
