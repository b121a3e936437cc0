"""capslib.exercises: every exercise's solution passes, its untouched stub says "not implemented yet"
with the shapes it expects, and every catalogued mistake gets its own named hint. Checkers never
raise and print nothing to stderr."""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from capslib import exercises as E

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = list(E.EXERCISES.values())


def _function(source, name):
    ns = {}
    exec(source, ns)                     # noqa: S102 — the book's own stub / solution text
    return ns[name]


def _checker(ex):
    return getattr(E, ex.checker)


def _flat(text):
    return " ".join(text.split())


def _hint_prefix(hint):
    """The fixed opening of a hint, up to its first {placeholder}."""
    return _flat(hint.split("{")[0])[:60]


# --------------------------------------------------------------------------- the catalogue


def test_catalogue():
    assert len(EXERCISES) >= 15
    ids = [ex.id for ex in EXERCISES]
    assert len(set(ids)) == len(ids)
    assert len({ex.slug for ex in EXERCISES}) == len(EXERCISES)
    toc = (ROOT / "_toc.yml").read_text()
    for ex in EXERCISES:
        assert f"book/{ex.chapter}" in toc, ex.chapter
        assert len(ex.mistakes) >= 2, ex.id
        assert ex.func.startswith("my_"), ex.func
        assert f"def {ex.func}(" in ex.stub and "raise NotImplementedError" in ex.stub
        assert f"def {ex.func}(" in ex.solution
        assert E.exercise(ex.checker) is ex and E.exercise(ex.id) is ex
        assert ex.checker in E.__all__
        names = [m.name for m in ex.mistakes]
        assert len(set(names)) == len(names), ex.id
        for m in ex.mistakes:
            assert m.examples(), f"{ex.id} {m.name}: no example function to test it with"
    # every chapter with capsules gets a puzzle and the required tasks exist
    required = ["conv-output-size", "capsules-reshape", "squash-safe", "predictions-einsum", "tiling-memory",
                "routing-iteration", "routing-loop", "capsule-lengths", "margin-loss", "mask-by-label",
                "mask-by-length", "decoder-sizes", "parameter-counts", "broadcasting-not-tiling"]
    slugs = {ex.slug for ex in EXERCISES}
    assert not set(required) - slugs
    for chapter in ("02_convolutions", "03_primary_capsules", "04_predictions", "05_routing",
                    "06_losses_and_decoder", "07_training_on_a_gpu"):
        assert any(ex.chapter == chapter and "puzzle" in ex.title for ex in EXERCISES), chapter


# --------------------------------------------------------------------------- solution, stub, mistakes


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda ex: ex.id)
def test_solution_is_correct(ex):
    fn = _function(ex.solution.split("\nprint(")[0], ex.func)
    v = _checker(ex)(fn, quiet=True)
    assert v.status == "correct", v.message
    assert v and v.mistake is None
    assert v.message.startswith("✓ Correct")


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda ex: ex.id)
def test_untouched_stub_is_not_implemented(ex):
    v = _checker(ex)(_function(ex.stub, ex.func), quiet=True)
    assert v.status == "not_implemented", v.message
    assert not v
    assert "not implemented yet" in v.message
    for name, shape, _ in ex.inputs + ex.outputs:           # the expected input and output shapes
        assert name in v.message and shape in v.message, (name, shape)
    assert ex.func in v.message


def test_stub_returning_ellipsis_is_not_implemented():
    v = E.check_squash(lambda s: ..., quiet=True)
    assert v.status == "not_implemented"


MISTAKE_CASES = [(ex, m, k, f) for ex in EXERCISES for m in ex.mistakes for k, f in enumerate(m.examples())]


@pytest.mark.parametrize("ex,m,k,fn", MISTAKE_CASES, ids=[f"{ex.id}-{m.name}-{k}" for ex, m, k, _ in MISTAKE_CASES])
def test_each_mistake_gets_its_hint(ex, m, k, fn):
    v = _checker(ex)(fn, quiet=True)
    assert v.status == "mistake", v.message
    assert v.mistake == m.name, v.message
    assert _hint_prefix(m.hint) in _flat(v.message)
    assert v.message.startswith("✗ Not yet")


# --------------------------------------------------------------------------- mistakes as students write them


def my_routing_iteration_softmax_over_i(u_hat, b):
    c = np.exp(b) / np.exp(b).sum(axis=1, keepdims=True)          # over i: the classic bug
    s = np.einsum("bij,bijd->bjd", c, u_hat)
    n2 = (s ** 2).sum(-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)
    return v, b + np.einsum("bijd,bjd->bij", u_hat, v)


def my_routing_iteration_elementwise(u_hat, b):
    c = np.exp(b) / np.exp(b).sum(axis=-1, keepdims=True)
    s = np.einsum("bij,bijd->bjd", c, u_hat)
    n2 = (s ** 2).sum(-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)
    return v, b + u_hat * v[:, None]


def my_squash_axis1(s):
    n = np.linalg.norm(s, axis=1, keepdims=True)
    return n ** 2 / (1 + n ** 2) * s / (n + 1e-9)


def my_squash_no_epsilon(s):
    n = np.linalg.norm(s, axis=-1, keepdims=True)
    return n ** 2 / (1 + n ** 2) * s / n


def my_to_capsules_8_32(x):
    b = x.shape[0]
    return x.reshape(b, 6, 6, 8, 32).swapaxes(-1, -2).reshape(b, 1152, 8)


def my_predictions_repeat(u, W):
    W_batch = np.repeat(W[None], len(u), axis=0)                  # (batch, 1152, 10, 16, 8)
    return np.einsum("bijde,bie->bijd", W_batch, u)


def my_predictions_broadcast_product(u, W):
    return (W[None] * u[:, :, None, None, :]).sum(-1)             # builds (batch, 1152, 10, 16, 8)


def my_predictions_16_10(u, W):
    return np.einsum("ijde,bie->bidj", W, u)


_B = None


def my_routing_global_b(u_hat, iterations=3):
    global _B
    if _B is None or _B.shape != u_hat.shape[:3]:
        _B = np.zeros(u_hat.shape[:3])
    for _ in range(iterations):
        c = np.exp(_B) / np.exp(_B).sum(-1, keepdims=True)
        s = np.einsum("bij,bijd->bjd", c, u_hat)
        n2 = (s ** 2).sum(-1, keepdims=True)
        v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)
        _B = _B + np.einsum("bijd,bjd->bij", u_hat, v)
    return v


def my_margin_loss_swapped(y, lengths):
    return np.mean(np.sum(y * np.maximum(0, 0.1 - lengths) ** 2
                          + 0.5 * (1 - y) * np.maximum(0, lengths - 0.9) ** 2, axis=-1))


def my_mask_argmax(v, y):
    keep = np.eye(10)[np.linalg.norm(v, axis=-1).argmax(-1)]
    return (v * keep[:, :, None]).reshape(len(v), -1)


def my_parameter_counts_no_bias(conv_filters=256, primary_types=32, primary_dim=8, num_classes=10, digit_dim=16):
    return {"conv1": 81 * conv_filters,
            "primary_caps": 81 * conv_filters * primary_types * primary_dim,
            "digit_caps": 36 * primary_types * num_classes * digit_dim * primary_dim,
            "decoder": num_classes * digit_dim * 512 + 512 * 1024 + 1024 * 784}


def my_parameter_counts_no_classes(conv_filters=256, primary_types=32, primary_dim=8, num_classes=10, digit_dim=16):
    out = _function(E.exercise("6.6").solution, "my_parameter_counts")(
        conv_filters, primary_types, primary_dim, num_classes, digit_dim)
    out["digit_caps"] = 36 * primary_types * digit_dim * primary_dim
    return out


@pytest.mark.parametrize("checker,fn,mistake,phrase", [
    ("check_routing_iteration", my_routing_iteration_softmax_over_i, "softmax_over_inputs", "over the output capsules j"),
    ("check_routing_iteration", my_routing_iteration_elementwise, "logits_per_dimension", "dot product over the 16 dims"),
    ("check_squash", my_squash_axis1, "norm_over_wrong_axis", "axis 1"),
    ("check_squash", my_squash_no_epsilon, "nan_at_zero", "epsilon inside the sqrt"),
    ("check_to_capsules", my_to_capsules_8_32, "grouped_8_32", "8 dims × 32 types"),
    ("check_predictions", my_predictions_repeat, "W_tiled_to_batch", "copied once per example"),
    ("check_predictions", my_predictions_broadcast_product, "W_tiled_to_batch", "copied once per example"),
    ("check_predictions_broadcast", my_predictions_repeat, "W_tiled_to_batch", "copied once per example"),
    ("check_predictions", my_predictions_16_10, "out_dims_transposed", "(16, 10)"),
    ("check_routing", my_routing_global_b, "b_not_reset", "b is not reset"),
    ("check_margin_loss", my_margin_loss_swapped, "margins_swapped", "m⁺ and m⁻ are swapped"),
    ("check_mask_by_label", my_mask_argmax, "longest_not_label", "true* class"),
    ("check_parameter_counts", my_parameter_counts_no_bias, "forgot_biases", "conv1 and primary_caps and decoder"),
    ("check_parameter_counts", my_parameter_counts_no_classes, "W_without_classes", "lacks the 10 classes"),
])
def test_student_written_mistakes(checker, fn, mistake, phrase):
    global _B
    _B = None
    v = getattr(E, checker)(fn, quiet=True)
    assert (v.status, v.mistake) == ("mistake", mistake), v.message
    assert _flat(phrase) in _flat(v.message)


def test_a_mistake_seen_on_one_input_is_named():
    """Softmax max-shifted over j but normalised over i: equals "softmax over i" at b = 0 only."""
    def my_routing_iteration(u_hat, b):
        e = np.exp(b - b.max(axis=-1, keepdims=True))
        c = e / e.sum(axis=1, keepdims=True)
        s = np.einsum("bij,bijd->bjd", c, u_hat)
        n2 = (s ** 2).sum(-1, keepdims=True)
        v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)
        return v, b + np.einsum("bijd,bjd->bij", u_hat, v)
    v = E.check_routing_iteration(my_routing_iteration, quiet=True)
    assert (v.status, v.mistake) == ("mistake", "softmax_over_inputs"), v.message
    assert "on this input" in v.message


# --------------------------------------------------------------------------- the framework


def test_plain_call_prints_and_returns_none(capsys):
    assert E.check_squash(my_squash_no_epsilon) is None
    out = capsys.readouterr()
    assert "NaN at a zero vector" in out.out and out.err == ""
    assert E.check_squash(my_squash_no_epsilon, quiet=True).mistake == "nan_at_zero"
    assert capsys.readouterr().out == ""


def test_errors_are_reported_not_raised():
    def my_squash(s):
        raise KeyError("oops")
    v = E.check_squash(my_squash, quiet=True)
    assert v.status == "error"
    assert "KeyError" in v.message and "oops" in v.message
    assert "s (1, 1152, 8)" in v.message                     # which input triggered it
    assert "line" in v.message and "raise KeyError" in v.message   # where, in the student's code


def test_batch_hard_coded():
    v = E.check_to_capsules(lambda x: x.reshape(1, 1152, 8), quiet=True)
    assert (v.status, v.mistake) == ("mistake", "batch_size_hard_coded"), v.message
    assert "batch 3" in v.message


def test_not_a_function_and_none():
    v = E.check_squash(42, quiet=True)
    assert v.status == "error" and "check_squash(my_squash)" in v.message
    v = E.check_squash(lambda s: None, quiet=True)
    assert (v.status, v.mistake) == ("wrong", "returned_none") and "forget `return`" in v.message


def test_unrecognised_answers_get_named_dims():
    v = E.check_routing(lambda u, r=3: np.zeros((u.shape[0], 16, 10)), quiet=True)
    assert v.status == "wrong"
    assert "(1, 16, 10)" in v.message and "(batch, out_caps, out_dim)" in _flat(v.message)
    assert "(batch, out_dim, out_caps)" in _flat(v.message)   # a transpose is spelled out
    v = E.check_capsule_lengths(lambda v: np.linalg.norm(v, axis=-1) + 0.01, quiet=True)
    assert v.status == "wrong" and "largest difference" in v.message and "index" in v.message


def test_generic_nan_is_named():
    v = E.check_margin_loss(lambda y, l: float("nan"), quiet=True)
    assert v.status == "wrong" and "nan" in v.message.lower()
    def my_capsule_lengths(v):
        out = np.linalg.norm(v, axis=-1)
        out[0, 0] = np.nan
        return out
    v = E.check_capsule_lengths(my_capsule_lengths, quiet=True)
    assert v.status == "wrong" and "NaN" in v.message


def test_batch_one_right_but_examples_mixed():
    def my_capsule_lengths(v):
        n = np.linalg.norm(v, axis=-1)
        return n if len(v) == 1 else np.broadcast_to(n.mean(axis=0), n.shape)     # mixes the examples
    v = E.check_capsule_lengths(my_capsule_lengths, quiet=True)
    assert v.status == "wrong" and "right for batch 1" in v.message


def test_keras_tensors_and_in_place_changes_are_fine():
    from keras import ops

    def my_squash(s):
        n2 = ops.sum(ops.square(s), axis=-1, keepdims=True)
        return n2 / (1 + n2) * s / ops.sqrt(n2 + 1e-9)
    assert E.check_squash(my_squash, quiet=True).status == "correct"

    def my_capsule_lengths(v):
        v **= 2                                               # changes the input in place
        return np.sqrt(v.sum(-1))
    assert E.check_capsule_lengths(my_capsule_lengths, quiet=True).status == "correct"


def test_no_warnings_escape(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        E.check_squash(my_squash_no_epsilon)                 # 0/0 inside: numpy would warn
        E.check_margin_loss(lambda y, l: np.log(-1.0))
    assert not caught
    assert capsys.readouterr().err == ""


def test_memory_note_for_broadcasting():
    fn = _function(E.exercise("4.3").solution, "my_predictions_broadcast")
    v = E.check_predictions_broadcast(fn, quiet=True)
    assert v.status == "correct" and "Peak memory" in v.message


# --------------------------------------------------------------------------- the book's cells


def test_cells_and_draft():
    labels = set()
    for ex in EXERCISES:
        cells = E.exercise_cells(ex.id)
        assert [c[0] for c in cells] == ["markdown", "code", "code", "markdown", "markdown"]
        assert f"(exercise-{ex.slug})=" in cells[0][1] and f":label: {ex.label}" in cells[0][1]
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
    assert draft.read_text() == E.draft_markdown() + "\n", "regenerate: python -m capslib.exercises > book/_exercise_cells.md"


# --------------------------------------------------------------------------- the chapters hold exactly these cells


def _cells(name):
    nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text())
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
             c.get("metadata", {})) for c in nb["cells"]]


def _headings(source):
    """The heading lines of a markdown cell, fenced code blocks skipped, as text without the #s."""
    out, fence = [], None
    for line in source.split("\n"):
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None and re.match(r"#{1,6} ", line):
            out.append(line.lstrip("#").strip())
    return out


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
        assert len(at) == 1, (f"{chapter}: exercise {ex.id} appears {len(at)} times — insert its cells from "
                              f"capslib.exercises.exercise_cells({ex.id!r}) (see book/_exercise_cells.md)")
        k = at[0]
        for n, (kind, source, meta) in enumerate(want):
            got = cells[k + n] if k + n < len(cells) else (None, None, {})
            assert got[:2] == (kind, source), (f"{chapter}: cell {n + 1} of exercise {ex.id} differs from "
                                               f"exercise_cells({ex.id!r}) — a changed stub, check or solution?")
            for key, value in meta.items():
                assert got[2].get(key) == value, f"{chapter}: exercise {ex.id}, cell {n + 1}: metadata {key!r}"
        claimed |= set(range(k, k + len(want)))
        starts.append((k, ex))
        # the section it ends: the nearest heading above it, and a heading (or the end) after it
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
        "book/exercises.ipynb is stale: its one markdown cell is capslib.exercises.exercises_page_markdown()"
    for ex in EXERCISES:
        assert f"| {ex.id} | {{ref}}`{ex.title} <exercise-{ex.slug}>`" in text, ex.id
        assert f"({ex.chapter}.ipynb)" in text, ex.chapter
