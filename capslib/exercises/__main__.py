"""``python -m capslib.exercises > book/_exercise_cells.md``: the draft of every exercise's cells."""

from . import draft_markdown

print(draft_markdown())
