"""Exercises for "CapsNet, shape by shape": checkers that run your function and say what is wrong.

Every exercise in the book is a short task, a stub you edit, and a check under it::

    def my_squash(s):
        raise NotImplementedError          # ← replace with your NumPy code

    check_squash(my_squash)

A checker calls your function on several random inputs — batch 1 and an odd batch among them,
plus edge cases such as zero vectors — and compares the result with capslib's own (``capslib.squash``,
``capslib.dynamic_routing``, ``capslib.Mask``, real capslib layers' parameter counts, …). It
prints one verdict:

    ✓ Correct                     capslib agrees on every input
    … not implemented yet         the stub still raises NotImplementedError; shows what it expects
    ✗ Not yet: <named mistake>    a typical mistake, recognised by name, with a hint
    ✗ Not yet: wrong shape / wrong values / NaN / your function raised …

Checkers never raise (an exception in your code is reported with the input that triggered it),
so a notebook always runs to the end. They print and return ``None``, so a cell shows only the
verdict; ``quiet=True`` prints nothing and returns the :class:`Verdict` instead (for tests)::

    v = check_squash(my_squash, quiet=True)
    v.status    # "correct" | "not_implemented" | "mistake" | "wrong" | "error"
    v.mistake   # the name of the recognised mistake, e.g. "nan_at_zero", or None
    v.message   # the text a plain call prints

Write your functions with NumPy (keras.ops or TensorFlow tensors are accepted too). Inputs are
float32 NumPy arrays; your function receives fresh copies, so changing them in place is harmless.

:data:`EXERCISES` lists every exercise — id, chapter, checker, the mistakes it recognises, and
the stub, task and solution the book shows. :func:`draft_markdown` renders them as notebook cells.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
import tracemalloc
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

__all__ = [
    "Verdict", "Exercise", "Mistake", "EXERCISES", "exercise", "draft_markdown", "exercises_page_markdown",
    "check_conv_output_size", "check_receptive_field",
    "check_to_capsules", "check_squash", "check_primary_caps_shape",
    "check_predictions", "check_tiled_W_bytes", "check_predictions_broadcast", "check_digit_caps_shapes",
    "check_routing_iteration", "check_routing", "check_coupling_map",
    "check_capsule_lengths", "check_margin_loss", "check_mask_by_label", "check_mask_by_length",
    "check_decoder_sizes", "check_parameter_counts", "check_reconstruction_loss",
    "check_steps_per_epoch", "check_learning_rate",
]

_WIDTH = 96
_SKIP = object()          # a mistake that does not apply to a case (e.g. "one iteration too few" at r = 1)


# =========================================================================== the framework


@dataclass(frozen=True)
class Verdict:
    """What a checker found. ``bool(verdict)`` is True only when the answer is correct.

    status: ``"correct"``, ``"not_implemented"`` (the untouched stub), ``"mistake"`` (a catalogued
    mistake, named in ``mistake``), ``"wrong"`` (wrong shape, values or NaN, not recognised), or
    ``"error"`` (your function raised). message: exactly what a plain call prints.
    """

    exercise: str
    status: str
    message: str
    mistake: str | None = None

    def __bool__(self):
        return self.status == "correct"

    def __str__(self):
        return self.message


@dataclass
class Case:
    """One input the checker tries. args may be a zero-argument callable (built only if needed)."""

    args: Any
    label: str = ""
    batch: int | None = None
    expected: Any = None          # a value, a zero-argument callable, or None: Exercise.reference(*args)


@dataclass
class Mistake:
    """A typical mistake, recognised by name.

    wrong: a function with the student's signature that makes this mistake (or a dict
        variant-name → function); it matches when your output equals its output on every case.
    detect: detect(run) → None/False, or a dict of fields for ``hint`` (custom recognisers:
        memory, state kept between calls, NaN at zero, …).
    error: a regex matched against ``"ExceptionType: message"`` when your function raised.
    always: also checked when your values are right (e.g. W tiled to the batch: right numbers,
        wrong memory).
    example: a function that makes this mistake, for the tests (default: ``wrong``).
    """

    name: str
    hint: str
    wrong: Callable | dict | None = None
    detect: Callable | None = None
    error: str | None = None
    always: bool = False
    example: Callable | None = None

    def examples(self):
        """Every function that makes this mistake (for tests)."""
        out = [self.example] if self.example is not None else []
        if isinstance(self.wrong, dict):
            out += list(self.wrong.values())
        elif self.wrong is not None:
            out.append(self.wrong)
        return out


@dataclass
class Exercise:
    """One exercise: the task, the stub, the checker's cases and reference, the mistake catalogue."""

    id: str                       # "3.2"
    slug: str                     # "squash-safe": labels ex-<slug> (exercise), sol-<slug> (solution)
    title: str
    chapter: str                  # "03_primary_capsules"
    section: str                  # the heading (no #) of the chapter section it ends: the exercise's cells
                                  # sit at the end of that section (tests/test_exercises.py checks)
    func: str                     # the student's function, e.g. "my_squash"
    checker: str                  # "check_squash"
    signature: str                # "my_squash(s)"
    inputs: list                  # [(name, shape or type, named dims)]
    outputs: list                 # [(name, shape or type, named dims)]
    reference_name: str           # what the answer is compared with, e.g. "capslib.squash"
    make_cases: Callable
    reference: Callable | None
    mistakes: list
    task: str                     # markdown
    stub: str                     # code
    solution: str                 # code
    explanation: str = ""         # markdown under the solution
    out_dims: Any = None          # named dims of the output(s), for shape messages
    rtol: float = 1e-4
    atol: float = 1e-5
    track_memory: bool = False
    on_correct: Callable | None = None     # extra line for a correct answer: on_correct(run) → str
    judge: Callable | None = None          # a custom comparison for dict answers: judge(run) → Verdict | None

    @property
    def label(self):
        return f"ex-{self.slug}"

    @property
    def heading(self):
        return f"{self.id} {self.title}"


class _Outcome:
    __slots__ = ("value", "error", "peak", "not_implemented")

    def __init__(self):
        self.value = None
        self.error = None
        self.peak = 0
        self.not_implemented = False


def _copy(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(v) for v in x)
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _call_quietly(fn, args, track_memory=False):
    """Call fn(*args) with NumPy warnings silenced (nothing may reach stderr in the book)."""
    out = _Outcome()
    started = False
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if track_memory:
                if tracemalloc.is_tracing():
                    tracemalloc.reset_peak()
                    base = tracemalloc.get_traced_memory()[0]
                else:
                    tracemalloc.start()
                    started = True
                    base = 0
            try:
                value = fn(*args)
            finally:
                if track_memory:
                    out.peak = tracemalloc.get_traced_memory()[1] - base
                    if started:
                        tracemalloc.stop()
        if value is Ellipsis:
            out.not_implemented = True
        out.value = value
    except NotImplementedError:
        out.not_implemented = True
    except Exception as e:  # noqa: BLE001 — the student's error is reported, never propagated
        out.error = e
    return out


class _Run:
    """One checker call: the cases, your outputs, the references (computed once, lazily)."""

    def __init__(self, ex: Exercise, fn):
        self.ex, self.fn = ex, fn
        self.cases = ex.make_cases()
        self.outcomes = [None] * len(self.cases)
        self._args = {}
        self._expected = {}
        self.got = [None] * len(self.cases)        # normalised outputs

    def args(self, i):
        if i not in self._args:
            a = self.cases[i].args
            self._args[i] = tuple(a() if callable(a) else a)
        return self._args[i]

    def expected(self, i):
        if i not in self._expected:
            args = self.args(i)
            e = self.cases[i].expected
            if e is None:
                e = self.ex.reference(*args)
            elif callable(e):
                e = e()
            self._expected[i] = _canon(e)
        return self._expected[i]

    def call(self, i, fn=None):
        """Call your function (or fn) on fresh copies of case i's inputs."""
        return _call_quietly(fn or self.fn, _copy(self.args(i)), self.ex.track_memory and fn is None)

    def label(self, i):
        c = self.cases[i]
        return c.label or _describe_args(self.ex, self.args(i))

    def close(self, a, b):
        return _close(a, b, self.ex.rtol, self.ex.atol)

    def ok(self, i):
        return self.got[i] is not None and self.close(self.got[i], self.expected(i))


def _canon(x):
    """Reference values as plain NumPy / Python: arrays, floats, ints, tuples, dicts."""
    if isinstance(x, dict):
        return {k: _canon(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_canon(v) for v in x)
    if isinstance(x, (bool, int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    a = _to_array(x)
    if a.ndim == 0:
        return float(a)
    return a


def _to_array(x):
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (int, float, np.number, list, tuple)):
        return np.asarray(x)
    try:
        from keras import ops
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001
        return np.asarray(x)


def _typename(x):
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape}"
    if hasattr(x, "shape") and not isinstance(x, (int, float)):
        return f"a {type(x).__name__} of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} items"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (int, float, str)) else type(x).__name__


def _normalize(got, want, what):
    """Bring your output into the reference's structure. Returns (value, problem-or-None)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return None, f"{what} should be a dict with keys {list(want)}, got {_typename(got)}"
        missing = [k for k in want if k not in got]
        if missing:
            return None, (f"{what} is missing the key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(k) for k in missing)} (expected keys {', '.join(repr(k) for k in want)})")
        out = {}
        for k in want:
            v, problem = _normalize(got[k], want[k], f"{what}[{k!r}]")
            if problem:
                return None, problem
            out[k] = v
        return out, None
    if isinstance(want, tuple):
        if isinstance(got, (str, bytes)) or isinstance(got, np.ndarray) or not hasattr(got, "__iter__") \
                or (hasattr(got, "shape") and not isinstance(got, (tuple, list))):
            return None, f"{what} should be a tuple of {len(want)} items, got {_typename(got)}"
        got = tuple(got)
        if len(got) != len(want):
            return None, f"{what} should be a tuple of {len(want)} items, got {len(got)} items"
        out = []
        for k, (g, w) in enumerate(zip(got, want)):
            v, problem = _normalize(g, w, f"{what}[{k}]")
            if problem:
                return None, problem
            out.append(v)
        return tuple(out), None
    if got is None:
        return None, f"{what} is None — did you forget `return`?"
    try:
        arr = _to_array(got)
    except Exception:  # noqa: BLE001
        kind = "an array" if isinstance(want, np.ndarray) else "a number"
        return None, f"{what} should be {kind}, got {_typename(got)}"
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        kind = "an array of numbers" if isinstance(want, np.ndarray) else "a number"
        return None, f"{what} should be {kind}, got {_typename(got)}"
    if isinstance(want, np.ndarray):
        return arr, None
    if arr.size != 1:
        return None, f"{what} should be one number, got an array of shape {arr.shape}"
    value = arr.reshape(()).item()
    return value, None


def _close(a, b, rtol, atol):
    if isinstance(b, dict):
        return isinstance(a, dict) and set(a) >= set(b) and all(_close(a[k], b[k], rtol, atol) for k in b)
    if isinstance(b, tuple):
        return isinstance(a, tuple) and len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(b, np.ndarray):
        if not isinstance(a, np.ndarray) or a.shape != b.shape:
            return False
        with np.errstate(all="ignore"):
            return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol))
    if isinstance(a, (np.ndarray, tuple, dict)) or a is None:
        return False
    if isinstance(b, int) and isinstance(a, (int, float)) and not isinstance(a, bool):
        return a == b
    try:
        return math.isfinite(a) and math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    except TypeError:
        return False


def _fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _describe_args(ex, args):
    parts = []
    for (name, _, _), a in zip(ex.inputs, args):
        if isinstance(a, np.ndarray):
            parts.append(f"{name} {_fmt_shape(a.shape)}")
        else:
            parts.append(f"{name}={a!r}")
    return ", ".join(parts)


def _wrap(text, indent=""):
    """Wrap each paragraph to _WIDTH; lines starting with 4 spaces (code) are kept as they are."""
    out = []
    for para in text.split("\n"):
        if para.startswith("    ") or not para.strip():
            out.append(indent + para)
        else:
            out.append(textwrap.fill(para, _WIDTH, initial_indent=indent, subsequent_indent=indent + "  "))
    return "\n".join(out)


def _head(ex):
    return f"{ex.id} {ex.title}"


def _expects_block(ex, fn_name):
    rows = ex.inputs + ex.outputs
    w_name = max(len(n) for n, _, _ in rows)
    w_shape = max(len(sh) for _, sh, _ in rows)

    def line(n, shape, dims):
        return (f"      {n:<{w_name}}  {shape:<{w_shape}}" + (f"   {dims}" if dims else "")).rstrip()

    lines = [f"  {fn_name}({', '.join(n for n, _, _ in ex.inputs)}) takes"]
    lines += [line(*row) for row in ex.inputs]
    returns = ex.outputs[0][0] if len(ex.outputs) == 1 else "(" + ", ".join(n for n, _, _ in ex.outputs) + ")"
    lines.append(f"  and returns {returns}:")
    lines += [line(*row) for row in ex.outputs]
    return "\n".join(lines)


def _not_implemented(ex, fn_name, run):
    labels = [run.label(i) for i in range(len(run.cases)) if not callable(run.cases[i].args) or run.cases[i].label]
    msg = (f"… {_head(ex)}: not implemented yet.\n"
           f"{_expects_block(ex, fn_name)}\n"
           f"  Replace `raise NotImplementedError` in {fn_name} with your code and run that cell, then this one.\n"
           f"  The check will try {len(labels)} inputs:\n" + "\n".join("      " + lab for lab in labels))
    return Verdict(ex.id, "not_implemented", msg)


def _verdict(ex, status, text, mistake=None, case_label=None):
    lead = "✗ Not yet — " + _head(ex) + ": "
    body = _wrap(lead + text)
    if case_label:
        body += "\n" + _wrap(f"  (seen on the input {case_label})")
    return Verdict(ex.id, status, body, mistake)


def _error_text(e):
    return f"{type(e).__name__}: {e}"


def _where(e):
    """' (line N of your code: `source`)' for the deepest frame outside libraries and this module."""
    import traceback
    try:
        frames = traceback.extract_tb(e.__traceback__)
    except Exception:  # noqa: BLE001
        return ""
    mine = [f for f in frames if "site-packages" not in f.filename and "dist-packages" not in f.filename
            and os.path.abspath(f.filename) != os.path.abspath(__file__) and "/lib/python" not in f.filename]
    if not mine:
        return ""
    f = mine[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" — in {f.name}, line {f.lineno}{code}"


def _mistake_matches(run, m):
    """Does your output equal this mistake's output on every case? Returns variant name or None."""
    variants = m.wrong if isinstance(m.wrong, dict) else {"": m.wrong}
    for vname, wrong in variants.items():
        used = 0
        for i in range(len(run.cases)):
            res = _call_quietly(wrong, _copy(run.args(i)))
            if res.error is not None or res.not_implemented:
                break
            if res.value is _SKIP:
                continue
            mine, problem = _normalize(res.value, run.expected(i), "x")
            if problem is not None:
                # a shape-changing mistake: compare raw arrays
                mine = _canon(res.value)
            if not _close(run.got[i], mine, run.ex.rtol, run.ex.atol) \
                    and not _close(_canon_raw(run.outcomes[i].value), mine, run.ex.rtol, run.ex.atol):
                break
            used += 1
        else:
            if used:
                return vname
    return None


def _mistake_matches_case(run, m, i):
    """Does your (wrong) output on case i equal this mistake's output there? Returns variant or None."""
    variants = m.wrong if isinstance(m.wrong, dict) else {"": m.wrong}
    for vname, wrong in variants.items():
        res = _call_quietly(wrong, _copy(run.args(i)))
        if res.error is not None or res.not_implemented or res.value is _SKIP:
            continue
        mine = _canon_raw(res.value)
        if mine is not None and not _close(mine, run.expected(i), run.ex.rtol, run.ex.atol) \
                and _close(run.got[i], mine, run.ex.rtol, run.ex.atol):
            return vname
    return None


def _canon_raw(x):
    try:
        return _canon(x)
    except Exception:  # noqa: BLE001
        return None


def _fields_variant(m, variant):
    return {"variant": variant} if variant else {}


def _shape_message(ex, got, want, dims, what):
    """A wrong-shape message in named dims, noticing transposes."""
    text = f"{what} has shape {_fmt_shape(got.shape)}, expected {_fmt_shape(want.shape)}"
    if dims:
        text += " = (" + ", ".join(dims) + ")"
    text += "."
    if sorted(got.shape) == sorted(want.shape) and got.shape != want.shape and dims \
            and len(set(want.shape)) == len(want.shape):
        name_of = dict(zip(want.shape, dims))
        text += (" Same sizes, different order: your axes read as (" + ", ".join(name_of[d] for d in got.shape)
                 + ") — transpose, or fix the einsum/reshape that made it.")
    elif got.ndim == want.ndim and dims:
        bad = [k for k in range(got.ndim) if got.shape[k] != want.shape[k]]
        text += (" Dim" + ("s " if len(bad) > 1 else " ") + ", ".join(f"{k} ({dims[k]})" for k in bad)
                 + (" differ." if len(bad) > 1 else " differs."))
    elif got.ndim != want.ndim:
        text += f" (rank {got.ndim} instead of {want.ndim})"
    return text


def _first_shape_problem(run, i):
    """(message) if output i has a wrong array shape somewhere, else None."""
    ex = run.ex
    want, got = run.expected(i), run.got[i]
    if isinstance(want, np.ndarray):
        if got.shape != want.shape:
            return _shape_message(ex, got, want, ex.out_dims, "your output")
    elif isinstance(want, tuple):
        for k, (g, w) in enumerate(zip(got, want)):
            if isinstance(w, np.ndarray) and g.shape != w.shape:
                dims = ex.out_dims[k] if ex.out_dims else None
                return _shape_message(ex, g, w, dims, ex.outputs[k][0])
    return None


def _value_message(run, i):
    """Where the values differ most, for output i."""
    want, got = run.expected(i), run.got[i]
    pairs = []
    if isinstance(want, tuple):
        pairs = [(run.ex.outputs[k][0], g, w) for k, (g, w) in enumerate(zip(got, want))]
    elif isinstance(want, dict):
        pairs = [(repr(k), got[k], w) for k, w in want.items()]
    else:
        pairs = [("your output", got, want)]
    for name, g, w in pairs:
        if _close(g, w, run.ex.rtol, run.ex.atol):
            continue
        if isinstance(w, np.ndarray):
            g64, w64 = g.astype(np.float64), w.astype(np.float64)
            bad = ~np.isfinite(g64) & np.isfinite(w64)
            if bad.any():
                idx = tuple(int(k) for k in np.argwhere(bad)[0])
                return (f"{name} has NaN or inf at index {idx} ({int(bad.sum())} such entries) where "
                        f"{run.ex.reference_name} gives {w64[idx]:.6g}. A division by zero or the sqrt of a "
                        f"negative number?")
            diff = np.abs(g64 - w64)
            idx = tuple(int(k) for k in np.unravel_index(np.argmax(diff), diff.shape))
            n_bad = int((diff > run.ex.atol + run.ex.rtol * np.abs(w64)).sum())
            return (f"wrong values in {name}: {n_bad:,} of {w.size:,} entries differ from {run.ex.reference_name}; "
                    f"the largest difference is {diff[idx]:.3g} at index {idx} (expected {w64[idx]:.6g}, "
                    f"got {g64[idx]:.6g}).")
        return f"wrong value for {name}: expected {w!r}, got {g!r}."
    return "wrong values."


def _judge(ex: Exercise, fn) -> Verdict:
    if not callable(fn):
        return Verdict(ex.id, "error", _wrap(
            f"✗ {_head(ex)}: {ex.checker} needs your function itself — {ex.checker}({ex.func}) — "
            f"not {_typename(fn)}."))
    fn_name = getattr(fn, "__name__", ex.func)
    run = _Run(ex, fn)
    n = len(run.cases)

    # 1. call it on every case; the untouched stub stops here
    for i in range(n):
        run.outcomes[i] = run.call(i)
        if run.outcomes[i].not_implemented:
            return _not_implemented(ex, fn_name, run)

    # 2. exceptions: a recognised error, a hard-coded batch, or the error itself
    errs = [i for i in range(n) if run.outcomes[i].error is not None]
    if errs:
        i = errs[0]
        text = _error_text(run.outcomes[i].error)
        for m in ex.mistakes:
            if m.error and re.search(m.error, text, re.S):
                return _verdict(ex, "mistake", m.hint + f"\n  (your function raised {_short(text)})",
                                m.name, run.label(i))
        ones = [k for k in range(n) if run.cases[k].batch == 1 and run.outcomes[k].error is None]
        if ones and all(run.cases[k].batch not in (None, 1) for k in errs):
            first_ok = ones[0]
            norm, problem = _normalize(run.outcomes[first_ok].value, run.expected(first_ok), "your output")
            if problem is None and run.close(norm, run.expected(first_ok)):
                return _verdict(ex, "mistake",
                                f"your function works for batch 1 but raises {_short(text)} for batch "
                                f"{run.cases[i].batch}. Is a batch size of 1 written into a reshape or a zeros(...)? "
                                f"Use -1 or x.shape[0] for the batch axis.",
                                "batch_size_hard_coded", run.label(i))
        return _verdict(ex, "error", f"your function raised {_short(text, 400)}{_where(run.outcomes[i].error)}",
                        None, run.label(i))

    # 3. structure: None, wrong type, missing keys, wrong tuple length
    for i in range(n):
        norm, problem = _normalize(run.outcomes[i].value, run.expected(i), "your output")
        if problem:
            for m in ex.mistakes:
                if m.wrong is not None and (variant := _mistake_matches_raw(run, m)) is not None:
                    return _verdict(ex, "mistake", m.hint.format(**_fields_variant(m, variant)), m.name, run.label(i))
            name = "returned_none" if run.outcomes[i].value is None else None
            return _verdict(ex, "wrong", problem + (f". It should return {_returns(ex)}." if name is None else ""),
                            name, run.label(i))
        run.got[i] = norm

    # 4. custom judges (dict answers)
    if ex.judge is not None:
        v = ex.judge(run)
        if v is not None:
            return v

    # 5. mistakes that can hide behind right values (memory, state between calls)
    for m in ex.mistakes:
        if m.always and m.detect is not None:
            found = m.detect(run)
            if found:
                return _verdict(ex, "mistake", m.hint.format(**(found if isinstance(found, dict) else {})), m.name)

    # 6. correct?
    if all(run.ok(i) for i in range(n)):
        labels = "; ".join(run.label(i) for i in range(n))
        extra = ex.on_correct(run) if ex.on_correct else ""
        msg = _wrap(f"✓ Correct — {_head(ex)}: your {fn_name} agrees with {ex.reference_name} on all {n} "
                    f"inputs ({labels}).")
        if extra:
            msg += "\n" + _wrap("  " + extra)
        return Verdict(ex.id, "correct", msg)

    # 7. the catalogue of typical mistakes
    bad = next(i for i in range(n) if not run.ok(i))
    for m in ex.mistakes:
        found = None
        if m.detect is not None and not m.always:
            found = m.detect(run)
        if not found and m.wrong is not None:
            variant = _mistake_matches(run, m)
            if variant is not None:
                found = _fields_variant(m, variant) or True
        if found:
            return _verdict(ex, "mistake", m.hint.format(**(found if isinstance(found, dict) else {})), m.name,
                            run.label(bad))

    # 7b. a mistake that explains the first failing input exactly, though not every input
    for m in ex.mistakes:
        if m.wrong is not None and not m.always:
            variant = _mistake_matches_case(run, m, bad)
            if variant is not None:
                return _verdict(ex, "mistake", "on this input your output is exactly what this mistake gives: "
                                + m.hint.format(**_fields_variant(m, variant)), m.name, run.label(bad))

    # 8. not recognised: shapes, NaN, values — in named dims, with the first input that fails
    shape = _first_shape_problem(run, bad)
    ones_ok = [k for k in range(n) if run.cases[k].batch == 1 and run.ok(k)]
    note = ""
    if ones_ok and run.cases[bad].batch not in (None, 1):
        note = (f" Your answer is right for batch 1 but not for batch {run.cases[bad].batch}: something mixes the "
                f"examples (a reduction over axis 0?) or carries state from one example to the next.")
    if shape:
        return _verdict(ex, "wrong", shape + note, None, run.label(bad))
    return _verdict(ex, "wrong", _value_message(run, bad) + note, None, run.label(bad))


def _mistake_matches_raw(run, m):
    """Like _mistake_matches, for outputs that do not even have the reference's structure."""
    variants = m.wrong if isinstance(m.wrong, dict) else {"": m.wrong}
    for vname, wrong in variants.items():
        for i in range(len(run.cases)):
            res = _call_quietly(wrong, _copy(run.args(i)))
            if res.error is not None or res.not_implemented:
                break
            if res.value is _SKIP:
                continue
            if not _close(_canon_raw(run.outcomes[i].value), _canon_raw(res.value), run.ex.rtol, run.ex.atol):
                break
        else:
            return vname
    return None


def _short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _returns(ex):
    if len(ex.outputs) == 1:
        n, shape, dims = ex.outputs[0]
        return f"{n}: {shape}"
    return "(" + ", ".join(n for n, _, _ in ex.outputs) + "): " + ", ".join(shape for _, shape, _ in ex.outputs)


EXERCISES: dict[str, Exercise] = {}


def _register(ex: Exercise):
    if ex.id in EXERCISES:
        raise ValueError(f"duplicate exercise id {ex.id}")
    EXERCISES[ex.id] = ex

    def check(fn, quiet=False):
        verdict = _judge(ex, fn)
        if quiet:
            return verdict
        print(verdict.message)
        return None

    check.__name__ = check.__qualname__ = ex.checker
    check.__doc__ = (f"Exercise {ex.id} {ex.title}: check your ``{ex.signature}`` against {ex.reference_name}.\n\n"
                     f"Prints a verdict and returns None; ``quiet=True`` returns the :class:`Verdict` and prints "
                     f"nothing. Recognised mistakes: {', '.join(m.name for m in ex.mistakes)}.")
    return check


def exercise(key: str) -> Exercise:
    """An exercise by id (``"3.2"``), slug (``"squash-safe"``) or checker name (``"check_squash"``)."""
    for ex in EXERCISES.values():
        if key in (ex.id, ex.slug, ex.checker, ex.label):
            return ex
    raise KeyError(f"no exercise {key!r}; known: {', '.join(EXERCISES)}")


# =========================================================================== NumPy helpers (for mistakes)


def _rng(seed):
    return np.random.default_rng(seed)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _squash_np(s, axis=-1, eps=1e-12):
    n2 = np.sum(np.square(s), axis=axis, keepdims=True)
    return n2 / (1.0 + n2) * s / np.sqrt(n2 + eps)


def _np(x):
    from keras import ops
    return np.asarray(ops.convert_to_numpy(x))


# =========================================================================== chapter 2: convolutions


@lru_cache(maxsize=None)
def _keras_conv_size(size, kernel, stride, padding):
    import keras
    shape = keras.layers.Conv2D(1, kernel, strides=stride).compute_output_shape((1, size + 2 * padding,
                                                                                 size + 2 * padding, 1))
    return int(shape[1])


def _conv_cases():
    rows = [(28, 9, 1, 0), (20, 9, 2, 0), (28, 3, 1, 1), (21, 9, 2, 0), (8, 3, 2, 0), (32, 5, 3, 2), (7, 7, 1, 0)]
    return [Case((n, k, s, p), f"size={n}, kernel={k}, stride={s}, padding={p}") for n, k, s, p in rows]


check_conv_output_size = _register(Exercise(
    id="2.1", slug="conv-output-size", title="The conv output size formula", chapter="02_convolutions",
    section="How big is the output?", func="my_conv_output_size", checker="check_conv_output_size",
    signature="my_conv_output_size(size, kernel, stride=1, padding=0)",
    inputs=[("size", "int", "input height (= width)"), ("kernel", "int", "k"), ("stride", "int", "s"),
            ("padding", "int", "p zeros added on each side")],
    outputs=[("out", "int", "output height (= width)")],
    reference_name="keras.layers.Conv2D(...).compute_output_shape",
    make_cases=_conv_cases,
    reference=lambda n, k, s, p: _keras_conv_size(n, k, s, p),
    mistakes=[
        Mistake("no_plus_one",
                "you count the steps between window positions, not the positions. A 9-wide window in 28 "
                "pixels can start at 0, 1, …, 19: that is 20 positions, (28 − 9)/1 + 1. Add the + 1 for "
                "the window at position 0.",
                wrong=lambda n, k, s=1, p=0: (n + 2 * p - k) // s),
        Mistake("no_floor",
                "your answer is a fraction for some inputs (e.g. (20 − 9)/2 + 1 = 6.5). A window cannot start "
                "half-way: the starts are the multiples of the stride that still fit, so floor the division: "
                "(size + 2·padding − kernel) // stride + 1.",
                wrong=lambda n, k, s=1, p=0: (n + 2 * p - k) / s + 1),
        Mistake("ceil_not_floor",
                "you round the division up. Rounding up counts one more window that would hang off the edge "
                "of the input; a valid convolution drops it: use // (floor).",
                wrong=lambda n, k, s=1, p=0: -(-(n + 2 * p - k) // s) + 1),
        Mistake("padding_once",
                "padding adds p zeros on *both* sides of the input, so the padded size is size + 2·padding, "
                "not size + padding.",
                wrong=lambda n, k, s=1, p=0: (n + p - k) // s + 1),
        Mistake("stride_ignored",
                "your answer ignores the stride. With stride s the window jumps s pixels at a time, so the room "
                "it can move, size + 2·padding − kernel, is divided by s.",
                wrong=lambda n, k, s=1, p=0: n + 2 * p - k + 1),
    ],
    task=("Write `my_conv_output_size(size, kernel, stride=1, padding=0)`: the height (= width) of a "
          "convolution's output, for a square input of `size` pixels, a `kernel`×`kernel` window moved "
          "`stride` pixels at a time, and `padding` zeros added on each side. CapsNet's two convolutions "
          "should give 28 → 20 (9×9, stride 1) and 20 → 6 (9×9, stride 2)."),
    stub='''def my_conv_output_size(size, kernel, stride=1, padding=0):
    """Output height of a convolution: ints in, one int out. (28, 9, 1, 0) -> 20."""
    raise NotImplementedError''',
    solution='''def my_conv_output_size(size, kernel, stride=1, padding=0):
    """Output height of a convolution: ints in, one int out. (28, 9, 1, 0) -> 20."""
    room = size + 2 * padding - kernel      # how far the window's first pixel can move
    return room // stride + 1               # the starts 0, s, 2s, ... that fit, counting 0''',
    explanation=("The window's first pixel can sit at 0, s, 2s, … as long as the window still fits: "
                 "$\\lfloor (n + 2p - k)/s \\rfloor + 1$ positions. For the primary conv, "
                 "$\\lfloor (20 - 9)/2 \\rfloor + 1 = 6$: the last column of conv1 is never read."),
))


def _rf_reference(layers):
    """Receptive field traced back, in 1-D: the interval of input positions that feed output unit 0."""
    lo, hi = 0, 0
    for k, s in reversed(list(layers)):
        lo, hi = lo * s, hi * s + k - 1
    return hi - lo + 1


def _rf_own_stride(layers):
    r, j = 1, 1
    for k, s in layers:
        j = j * s
        r = r + (k - 1) * j
    return r


def _rf_cases():
    stacks = [[(9, 1), (9, 2)], [(9, 2), (9, 1)], [(3, 1), (3, 1), (3, 1)], [(3, 2), (3, 2), (3, 2)],
              [(7, 2), (3, 2), (3, 1)], [(5, 1), (2, 2), (3, 1), (2, 2), (3, 1)]]
    return [Case((st,), f"layers={st}") for st in stacks]


check_receptive_field = _register(Exercise(
    id="2.2", slug="receptive-field", title="A shape puzzle: receptive fields", chapter="02_convolutions",
    section="What one unit sees: receptive fields", func="my_receptive_field", checker="check_receptive_field",
    signature="my_receptive_field(layers)",
    inputs=[("layers", "list of (kernel, stride)", "from the image up")],
    outputs=[("r", "int", "side of the square of pixels one unit of the last layer sees")],
    reference_name="the input pixels that reach output unit 0, traced back layer by layer",
    make_cases=_rf_cases,
    reference=_rf_reference,
    mistakes=[
        Mistake("own_stride",
                "you multiply a layer's (kernel − 1) by its *own* stride. A layer's stride only spaces out "
                "its outputs, so it enters the receptive field of the layer *after* it: update r with the "
                "jump so far, then the jump: r += (k − 1)·j; j *= s. (Your rule gives 25 for CapsNet's "
                "primary conv instead of 17.)",
                wrong=_rf_own_stride),
        Mistake("strides_ignored",
                "your answer ignores the strides. After a stride-2 layer, neighbouring units are 2 pixels "
                "apart, so each extra kernel tap of a later layer reaches 2 pixels further: "
                "r += (k − 1)·j, with j the product of the strides below.",
                wrong=lambda layers: 1 + sum(k - 1 for k, _ in layers)),
        Mistake("sum_of_kernels",
                "you add the kernel sizes. Two stacked 3×3 convolutions see 5×5, not 6×6: each layer adds "
                "(k − 1)·j pixels to what the layer below saw, starting from r = 1.",
                wrong=lambda layers: sum(k for k, _ in layers)),
    ],
    task=("Write `my_receptive_field(layers)`: given convolutions as a list of `(kernel, stride)` from the "
          "image up, return the side, in pixels, of the square of input pixels that one unit of the **last** "
          "layer sees. CapsNet's `[(9, 1), (9, 2)]` gives 17."),
    stub='''def my_receptive_field(layers):
    """layers: [(kernel, stride), ...] from the image up -> int, the receptive field of the last layer."""
    raise NotImplementedError''',
    solution='''def my_receptive_field(layers):
    """layers: [(kernel, stride), ...] from the image up -> int, the receptive field of the last layer."""
    r, j = 1, 1                  # one pixel sees itself; neighbouring pixels are 1 apart
    for kernel, stride in layers:
        r = r + (kernel - 1) * j   # k taps, spaced j pixels apart, on top of what each tap sees
        j = j * stride             # this layer's stride spaces out *its* outputs
    return r''',
    explanation=("The order of the two updates is the whole puzzle: the stride of a layer changes the spacing of "
                 "its outputs, so it only matters for the layers above it."),
))


# =========================================================================== chapter 3: primary capsules


@lru_cache(maxsize=1)
def _identity_primary_caps():
    """capslib.PrimaryCaps with a 1×1 identity conv: (batch, 6, 6, 256) → squash(regrouped input)."""
    import capslib
    layer = capslib.PrimaryCaps(32, 8, kernel_size=1, strides=1, name="identity_primary_caps")
    layer.build((None, 6, 6, 256))
    layer.conv.set_weights([np.eye(256, dtype="float32")[None, None], np.zeros(256, "float32")])
    return layer


def _unsquash(v):
    """The inverse of squash: v with |v| = n²/(1+n²) → s with |s| = n (exact for |v| well below 1)."""
    v = np.asarray(v, np.float64)
    g = np.linalg.norm(v, axis=-1, keepdims=True)
    n = np.sqrt(g / np.maximum(1.0 - g, 1e-12))
    return np.where(g > 0, v / np.where(g > 0, g, 1.0) * n, 0.0)


def _capsules_reference(x):
    """capslib.PrimaryCaps's regrouping of x, read back through its squash."""
    return _unsquash(_np(_identity_primary_caps()(x))).astype(np.float32)


def _capsule_cases():
    rng = _rng(31)
    return [Case((rng.uniform(-0.3, 0.3, (b, 6, 6, 256)).astype("float32"),), batch=b) for b in (1, 3, 7)]


check_to_capsules = _register(Exercise(
    id="3.1", slug="capsules-reshape", title="6×6×256 into 1152 capsules of 8", chapter="03_primary_capsules",
    section="Which channels make a capsule",
    func="my_to_capsules", checker="check_to_capsules", signature="my_to_capsules(x)",
    inputs=[("x", "(batch, 6, 6, 256)", "batch, height, width, channels = 32 types × 8 dims")],
    outputs=[("u", "(batch, 1152, 8)", "batch, in_caps = 6·6·32, in_dim")],
    reference_name="capslib.PrimaryCaps's grouping",
    make_cases=_capsule_cases, reference=_capsules_reference,
    out_dims=("batch", "in_caps", "in_dim"),
    mistakes=[
        Mistake("grouped_8_32",
                "you read the 256 channels as 8 dims × 32 types (dim d of type t at channel d·32 + t). The "
                "paper's PrimaryCaps are \"32 channels of 8D capsules\": channel t·8 + d is dim d of type t, "
                "so one capsule is 8 *neighbouring* channels. x.reshape(batch, 1152, 8) already groups them "
                "that way — no transpose needed.",
                wrong=lambda x: x.reshape(x.shape[0], 36, 8, 32).transpose(0, 1, 3, 2).reshape(x.shape[0], 1152, 8)),
        Mistake("types_major_order",
                "right capsules, wrong order: your capsule i runs over the types first (i = t·36 + row·6 + "
                "col), as a channels-first (PyTorch) port does. capslib, like TensorFlow's (batch, height, "
                "width, channels) layout, numbers them i = (row·6 + col)·32 + t, and W of shape "
                "(1152, 10, 16, 8) is indexed that way. Reshape directly, without moving the type axis.",
                wrong=lambda x: x.reshape(x.shape[0], 36, 32, 8).transpose(0, 2, 1, 3).reshape(x.shape[0], 1152, 8)),
        Mistake("not_flattened",
                "you made the capsules — 6 × 6 positions × 32 types × 8 dims — but did not flatten the "
                "(position, type) pairs into one axis of 6·6·32 = 1152 input capsules: return "
                "(batch, 1152, 8).",
                wrong=lambda x: x.reshape(x.shape[0], 6, 6, 32, 8)),
        Mistake("batch_merged",
                "your output has no batch axis: x.reshape(-1, 8) puts every example's capsules in one "
                "long list. Keep the batch: x.reshape(x.shape[0], -1, 8) or x.reshape(-1, 1152, 8).",
                wrong=lambda x: x.reshape(-1, 8)),
        Mistake("capsule_axes_swapped",
                "your last two axes are (8, 1152): capsules must be rows, (batch, in_caps, in_dim) = "
                "(batch, 1152, 8).",
                wrong=lambda x: x.reshape(x.shape[0], 1152, 8).transpose(0, 2, 1)),
    ],
    task=("The primary conv gives `x` of shape `(batch, 6, 6, 256)`. Write `my_to_capsules(x)` that regroups it "
          "into `(batch, 1152, 8)`: 6·6 positions × 32 capsule types, each an 8-D vector, in the paper's grouping "
          "(channel `t·8 + d` is dim `d` of type `t`) and capslib's capsule order `i = (row·6 + col)·32 + t`. "
          "No squash yet."),
    stub='''import numpy as np

def my_to_capsules(x):
    """x (batch, 6, 6, 256) -> u (batch, 1152, 8): 32 types x 8 dims per position, not squashed."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_to_capsules(x):
    """x (batch, 6, 6, 256) -> u (batch, 1152, 8): 32 types x 8 dims per position, not squashed."""
    batch = x.shape[0]
    # the 256 channels are (32 types, 8 dims) in C order, and the rows of the result run over
    # (row, col, type) in C order: one reshape does both
    return x.reshape(batch, 6 * 6 * 32, 8)''',
    explanation=("A reshape reads the numbers in memory order: (row, col, type, dim), the last index fastest. So "
                 "`reshape(batch, 1152, 8)` makes each capsule 8 neighbouring channels — the paper's grouping — "
                 "and numbers the capsules `(row·6 + col)·32 + t`. Reading the channels as `(8, 32)` would mix "
                 "dims of 8 different capsules into one vector: the shape is right, the capsules are not."),
))


def _squash_cases():
    rng = _rng(32)
    zeros = (0.5 * rng.normal(size=(2, 1152, 8))).astype("float32")
    zeros[0, :5] = 0.0
    zeros[1, 100] = 0.0
    return [
        Case(((0.5 * rng.normal(size=(1, 1152, 8))).astype("float32"),), batch=1),
        Case(((0.5 * rng.normal(size=(3, 1152, 8))).astype("float32"),), batch=3),
        Case((zeros,), "s (2, 1152, 8) with 6 zero vectors", batch=2),
        Case(((0.2 * rng.normal(size=(7, 10, 16))).astype("float32"),), batch=7),
        Case(((30.0 * rng.normal(size=(3, 10, 16))).astype("float32"),), "s (3, 10, 16), long vectors", batch=3),
    ]


def _nan_at_zero(run):
    for i in range(len(run.cases)):
        s, got = run.args(i)[0], run.got[i]
        if not isinstance(got, np.ndarray) or got.shape != s.shape:
            continue
        bad = ~np.isfinite(got)
        if bad.any():
            zero_rows = np.all(s == 0, axis=-1, keepdims=True)
            if np.all(~bad | zero_rows):
                return {"where": run.label(i)}
    return None


def _squash_eps_variants():
    out = {}
    for eps in (1e-4, 1e-3, 1e-2, 1e-1):
        out[f"eps={eps:g} inside the sqrt"] = (lambda e: lambda s: _squash_np(s, eps=e))(eps)
        out[f"eps={eps:g} added to |s|"] = (lambda e: lambda s: (lambda n2: n2 / (1 + n2) * s / (np.sqrt(n2) + e))(
            np.sum(s * s, axis=-1, keepdims=True)))(eps)
    return out


def _squash_naive(s):
    n2 = np.sum(s * s, axis=-1, keepdims=True)
    return n2 / (1 + n2) * s / np.sqrt(n2)


check_squash = _register(Exercise(
    id="3.2", slug="squash-safe", title="Squash, written safely", chapter="03_primary_capsules",
    section="Squash, derived", func="my_squash", checker="check_squash", signature="my_squash(s)",
    inputs=[("s", "(batch, 1152, 8) or (batch, 10, 16)", "batch, capsules, dims")],
    outputs=[("v", "same shape as s", "each capsule's vector squashed to length |s|²/(1+|s|²)")],
    reference_name="capslib.squash",
    make_cases=_squash_cases,
    reference=lambda s: _np(__import__("capslib").squash(s)),
    out_dims=("batch", "capsules", "dims"),
    atol=1e-6,
    mistakes=[
        Mistake("nan_at_zero",
                "NaN at a zero vector ({where}): |s| = 0 makes s/|s| a 0/0. Add a small epsilon inside the "
                "sqrt — norm = np.sqrt(np.sum(s**2, axis=-1, keepdims=True) + 1e-9) — so a zero capsule "
                "squashes to 0 (and, in training, its gradient stays finite).",
                detect=_nan_at_zero, example=_squash_naive),
        Mistake("norm_over_wrong_axis",
                "your norm runs over the wrong axis ({variant}). A capsule is the vector on the *last* axis "
                "(8 numbers for a primary capsule, 16 for a digit capsule): "
                "np.sum(s**2, axis=-1, keepdims=True).",
                wrong={"axis 1, across the capsules": lambda s: _squash_np(s, axis=1),
                       "axis 0, across the batch": lambda s: _squash_np(s, axis=0),
                       "all axes at once": lambda s: _squash_np(s, axis=None)}),
        Mistake("unit_vector",
                "every output has length 1: you divided by |s| but forgot the gain |s|²/(1 + |s|²), which "
                "keeps short vectors short (a capsule's length is a probability).",
                wrong=lambda s: s / np.sqrt(np.sum(s * s, axis=-1, keepdims=True) + 1e-12)),
        Mistake("gain_without_unit",
                "you multiplied s by the gain |s|²/(1 + |s|²) but did not divide by |s|: your lengths come out "
                "|s|³/(1 + |s|²) and grow without bound. v = gain · s / |s|.",
                wrong=lambda s: (lambda n2: n2 / (1 + n2) * s)(np.sum(s * s, axis=-1, keepdims=True))),
        Mistake("gain_not_squared",
                "your gain is |s|/(1 + |s|); Eq. 1 uses the squared norm: |s|²/(1 + |s|²).",
                wrong=lambda s: (lambda n: n / (1 + n) * s / (n + 1e-12))(
                    np.sqrt(np.sum(s * s, axis=-1, keepdims=True)))),
        Mistake("epsilon_too_big",
                "right idea, but your epsilon ({variant}) is big enough to change ordinary capsules. Use "
                "something like 1e-9 inside the sqrt: it only matters when |s| is about 0.",
                wrong=_squash_eps_variants()),
        Mistake("keepdims_missing",
                "your norm has shape (batch, capsules), which cannot divide s of shape (batch, capsules, dims). "
                "Keep the summed axis: np.sum(s**2, axis=-1, keepdims=True) is (batch, capsules, 1) and "
                "broadcasts.",
                error=r"could not be broadcast|Incompatible shapes|must match the size",
                example=lambda s: (lambda n2: n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9))(np.sum(s * s, axis=-1))),
    ],
    task=("Write `my_squash(s)`, Eq. 1 of the paper over the **last** axis: "
          "$v = \\frac{|s|^2}{1+|s|^2}\\frac{s}{|s|}$. It must work for primary capsules `(batch, 1152, 8)` and "
          "digit capsules `(batch, 10, 16)`, and return **0, not NaN, for a zero vector**."),
    stub='''import numpy as np

def my_squash(s):
    """s (batch, n_caps, dim) -> v, same shape; squash over the last axis, 0 for a zero vector."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_squash(s):
    """s (batch, n_caps, dim) -> v, same shape; squash over the last axis, 0 for a zero vector."""
    n2 = np.sum(s ** 2, axis=-1, keepdims=True)      # |s|²: (batch, n_caps, 1), broadcasts against s
    norm = np.sqrt(n2 + 1e-9)                        # epsilon inside the sqrt: never 0/0
    return n2 / (1.0 + n2) * s / norm''',
    explanation=("`keepdims=True` keeps the norm `(batch, n_caps, 1)`, so it broadcasts over the `dim` axis. The "
                 "epsilon turns 0/0 into 0/√ε = 0. `capslib.squash` goes further (it rescales first, so even "
                 "|s| = 1e30 cannot overflow in float32) — read it in `capslib/ops.py`."),
))


def _pc_reference(h, w):
    import keras
    import capslib
    conv1 = keras.layers.Conv2D(256, 9).compute_output_shape((None, h, w, 1))
    _, in_caps, in_dim = capslib.PrimaryCaps().compute_output_shape(conv1)
    return (int(in_caps), int(in_dim))


def _pc_stack(h, w, conv1=True, types=32, plus_one=True, square=False):
    if square:
        w = h
    if conv1:
        h, w = h - 8, w - 8
    add = 1 if plus_one else 0
    return ((h - 9) // 2 + add) * ((w - 9) // 2 + add) * types


check_primary_caps_shape = _register(Exercise(
    id="3.3", slug="primary-caps-shape", title="A shape puzzle: capsules for other image sizes",
    chapter="03_primary_capsules", section="PrimaryCaps on a real digit",
    func="my_primary_caps_shape", checker="check_primary_caps_shape",
    signature="my_primary_caps_shape(height, width)",
    inputs=[("height", "int", "image height"), ("width", "int", "image width")],
    outputs=[("in_caps", "int", "number of primary capsules"), ("in_dim", "int", "their dimension")],
    reference_name="capslib.PrimaryCaps(...).compute_output_shape after conv1",
    make_cases=lambda: [Case(hw, f"height={hw[0]}, width={hw[1]}") for hw in
                        [(28, 28), (40, 40), (32, 32), (36, 28), (29, 29)]],
    reference=_pc_reference,
    mistakes=[
        Mistake("forgot_conv1",
                "you applied the primary conv to the image itself. conv1 (9×9, stride 1) comes first: "
                "28 → 20, then the primary conv (9×9, stride 2): 20 → 6.",
                wrong=lambda h, w: (_pc_stack(h, w, conv1=False), 8)),
        Mistake("counted_channels",
                "you counted channels, not capsules: the primary conv's 256 channels at each position are 32 "
                "capsules of 8 dims, so a position holds 32 capsules.",
                wrong={"channels as capsules": lambda h, w: (_pc_stack(h, w, types=256), 8),
                       "one capsule of 256": lambda h, w: (_pc_stack(h, w, types=1), 256),
                       "channels, dim 1": lambda h, w: (_pc_stack(h, w, types=256), 1)}),
        Mistake("forgot_types",
                "you counted positions only: each of the 6×6 positions holds 32 capsules (one per type), "
                "so 28×28 images give 6·6·32 = 1152.",
                wrong=lambda h, w: (_pc_stack(h, w, types=1), 8)),
        Mistake("no_plus_one",
                "your conv output sizes lack the + 1 of the output-size rule (exercise 2.1): "
                "out = (in − k) // s + 1.",
                wrong=lambda h, w: (_pc_stack(h, w, plus_one=False), 8)),
        Mistake("square_assumed",
                "right for square images, wrong for 36×28: use the height for the rows and the width for the "
                "columns.",
                wrong=lambda h, w: (_pc_stack(h, w, square=True), 8)),
    ],
    task=("affNIST digits are 40×40; CIFAR images 32×32. Write `my_primary_caps_shape(height, width)` returning "
          "the pair `(in_caps, in_dim)` that CapsNet's PrimaryCaps would make from a `height`×`width` image "
          "(conv1 256@9×9 stride 1, then the primary conv 256@9×9 stride 2, 32 types × 8 dims). 28×28 gives "
          "`(1152, 8)`."),
    stub='''def my_primary_caps_shape(height, width):
    """Image size -> (in_caps, in_dim) of the primary capsules. (28, 28) -> (1152, 8)."""
    raise NotImplementedError''',
    solution='''def my_primary_caps_shape(height, width):
    """Image size -> (in_caps, in_dim) of the primary capsules. (28, 28) -> (1152, 8)."""
    def out(size, kernel, stride):
        return (size - kernel) // stride + 1
    h = out(out(height, 9, 1), 9, 2)      # conv1, then the primary conv
    w = out(out(width, 9, 1), 9, 2)
    return (h * w * 32, 8)                 # 32 capsule types per position, 8 dims each''',
    explanation=("40×40 gives 12×12 positions, so 4,608 capsules — and a DigitCaps W four times as big: W grows "
                 "with the image area."),
))


# =========================================================================== chapter 4: predictions


@lru_cache(maxsize=1)
def _digit_caps_full():
    import capslib
    layer = capslib.DigitCaps(kernel_initializer="zeros", name="exercise_digit_caps")
    layer.build((None, 1152, 8))
    return layer


def _predictions_reference(u, W):
    """capslib.DigitCaps.predictions with this W, out-major → the paper's (batch, 1152, 10, 16)."""
    layer = _digit_caps_full()
    layer.W.assign(W)
    return _np(layer.predictions(u)).transpose(0, 2, 1, 3)


def _prediction_cases():
    rng = _rng(41)
    W = (0.1 * rng.normal(size=(1152, 10, 16, 8))).astype("float32")
    return [Case(((rng.uniform(-0.3, 0.3, (b, 1152, 8))).astype("float32"), W), batch=b) for b in (1, 3, 7)]


def _tiled(run):
    """Did a batch ≥ 3 call allocate about batch × W? (tracemalloc sees NumPy's buffers.)"""
    for i, c in enumerate(run.cases):
        if c.batch and c.batch >= 3 and run.outcomes[i].peak:
            W = run.args(i)[1]
            per_copy = W.size * 4
            if run.outcomes[i].peak > 0.8 * c.batch * per_copy:
                return {"peak": run.outcomes[i].peak / 2**20, "batch": c.batch, "W": per_copy / 2**20,
                        "at128": 128 * per_copy / 2**20}
    return None


def _tile_einsum(u, W):
    Wt = np.tile(W[None], (u.shape[0], 1, 1, 1, 1))                 # (batch, 1152, 10, 16, 8)
    return np.einsum("bijde,bie->bijd", Wt, u)


def _memory_note(run):
    i = max(range(len(run.cases)), key=lambda k: run.cases[k].batch or 0)
    W = run.args(i)[1]
    return (f"Peak memory of your call at batch {run.cases[i].batch}: {run.outcomes[i].peak / 2**20:.1f} MiB "
            f"(tiling W would add {run.cases[i].batch * W.size * 4 / 2**20:.0f} MiB).")


_TILED_HINT = ("right values, but your function allocated {peak:.0f} MiB for batch {batch} — about batch × W "
               "({W:.1f} MiB each): W was copied once per example. np.tile / np.repeat / broadcast_to(...).copy() "
               "do that, and so does an elementwise product W[None] * u[..., None, None, :] summed afterwards (it "
               "builds the same (batch, 1152, 10, 16, 8) tensor). At batch 128 that is {at128:.0f} MiB per step. "
               "W is shared by the batch: contract the in_dim axis directly ({how}).")

check_predictions = _register(Exercise(
    id="4.1", slug="predictions-einsum", title="û with an einsum", chapter="04_predictions",
    section="Three ways to compute every prediction at once", func="my_predictions", checker="check_predictions",
    signature="my_predictions(u, W)",
    inputs=[("u", "(batch, 1152, 8)", "batch, in_caps, in_dim"),
            ("W", "(1152, 10, 16, 8)", "in_caps, out_caps, out_dim, in_dim")],
    outputs=[("u_hat", "(batch, 1152, 10, 16)", "batch, in_caps, out_caps, out_dim (the paper's layout)")],
    reference_name="capslib.DigitCaps.predictions (transposed to the paper's layout)",
    make_cases=_prediction_cases, reference=_predictions_reference,
    out_dims=("batch", "in_caps", "out_caps", "out_dim"), track_memory=True, on_correct=_memory_note,
    mistakes=[
        Mistake("W_tiled_to_batch", _TILED_HINT.replace("{how}", "one np.einsum(\"ijde,bie->bijd\", W, u)"),
                detect=_tiled, always=True, example=_tile_einsum),
        Mistake("out_dims_transposed",
                "your last two axes are (16, 10) = (out_dim, out_caps); the predictions are "
                "(batch, in_caps, out_caps, out_dim) = (batch, 1152, 10, 16): one 16-D vector per (i, j). "
                "Write the output subscripts in that order: \"...->bijd\".",
                wrong=lambda u, W: np.einsum("ijde,bie->bidj", W, u)),
        Mistake("out_major_layout",
                "right numbers in capslib's out-major layout (batch, 10, 1152, 16) — what "
                "DigitCaps.predictions returns. This exercise asks for the paper's layout "
                "(batch, 1152, 10, 16), i before j: output subscripts \"bijd\".",
                wrong=lambda u, W: np.einsum("ijde,bie->bjid", W, u)),
        Mistake("contracted_wrong_axis",
                "your einsum contracts the wrong axis of W. W is (in_caps, out_caps, out_dim, in_dim) = "
                "(1152, 10, 16, 8): u's 8 numbers must meet W's *last* axis — \"ijde,bie->bijd\".",
                error=r"does not match previous terms|size of label|operands could not be broadcast|"
                      r"Incompatible shapes|mismatch",
                example=lambda u, W: np.einsum("ijed,bie->bijd", W, u)),
    ],
    task=("Write `my_predictions(u, W)`: every prediction $\\hat u_{j|i} = W_{ij} u_i$ at once, with **one** "
          "`np.einsum`. `u` is `(batch, 1152, 8)`, `W` is `(1152, 10, 16, 8)` (in_caps, out_caps, out_dim, "
          "in_dim); return `û` in the paper's layout `(batch, 1152, 10, 16)`. Don't copy `W` per example: the "
          "checker measures your memory."),
    stub='''import numpy as np

def my_predictions(u, W):
    """u (batch, 1152, 8), W (1152, 10, 16, 8) -> u_hat (batch, 1152, 10, 16)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_predictions(u, W):
    """u (batch, 1152, 8), W (1152, 10, 16, 8) -> u_hat (batch, 1152, 10, 16)."""
    # for every b, i, j, d: sum over e of W[i, j, d, e] * u[b, i, e]
    return np.einsum("ijde,bie->bijd", W, u)''',
    explanation=("Read the string as the loops: `i, j, d, e` index W, `b, i, e` index u; `e` is missing from the "
                 "output, so it is summed. `i` appears in both inputs and the output: it is matched, not summed. "
                 "No copy of W per example is ever made."),
))


@lru_cache(maxsize=1)
def _W_size():
    """Numbers in capslib.DigitCaps's W (1152 × 10 × 16 × 8)."""
    return int(np.prod(_digit_caps_full().W.shape))


check_tiled_W_bytes = _register(Exercise(
    id="4.2", slug="tiling-memory", title="The memory cost of tiling W", chapter="04_predictions",
    section="What tiling W to the batch costs", func="my_tiled_W_bytes", checker="check_tiled_W_bytes",
    signature="my_tiled_W_bytes(batch, bytes_per_number=4)",
    inputs=[("batch", "int", "examples per step"), ("bytes_per_number", "int", "4 for float32, 2 for float16")],
    outputs=[("n_bytes", "int", "bytes of W tiled to (batch, 1152, 10, 16, 8)")],
    reference_name="capslib.DigitCaps's W size × batch × bytes",
    make_cases=lambda: [Case(a, f"batch={a[0]}, bytes_per_number={a[1]}") for a in
                        [(1, 4), (7, 4), (128, 4), (128, 2), (33, 8)]],
    reference=lambda batch, nbytes=4: batch * _W_size() * nbytes,
    mistakes=[
        Mistake("forgot_bytes",
                "you counted numbers, not bytes: each float32 takes 4 bytes (bytes_per_number).",
                wrong=lambda b, n=4: b * 1152 * 10 * 16 * 8),
        Mistake("forgot_batch",
                "that is W itself; tiling makes one copy per example, so multiply by the batch.",
                wrong=lambda b, n=4: 1152 * 10 * 16 * 8 * n),
        Mistake("bits_not_bytes",
                "you counted bits: a float32 is 32 bits = 4 bytes. bytes_per_number is already in bytes.",
                wrong=lambda b, n=4: b * 1152 * 10 * 16 * 8 * n * 8),
        Mistake("counted_u_hat",
                "that is the size of û (batch, 1152, 10, 16), which every method must hold. The tiled W is "
                "(batch, 1152, 10, 16, 8): 8 times more.",
                wrong=lambda b, n=4: b * 1152 * 10 * 16 * n),
        Mistake("W_without_classes",
                "your W has no out_caps axis: there is one 16×8 matrix for every (i, j) pair, "
                "1152 × 10 × 16 × 8 numbers.",
                wrong=lambda b, n=4: b * 1152 * 16 * 8 * n),
    ],
    task=("The TF2 port's formulation (b) copies `W` once per example, to `(batch, 1152, 10, 16, 8)`. Write "
          "`my_tiled_W_bytes(batch, bytes_per_number=4)`: how many **bytes** that tiled tensor takes. Then print "
          "it in MiB (÷ 2**20) for batch 128."),
    stub='''def my_tiled_W_bytes(batch, bytes_per_number=4):
    """Bytes of W tiled to (batch, 1152, 10, 16, 8). ints in, int out."""
    raise NotImplementedError''',
    solution='''def my_tiled_W_bytes(batch, bytes_per_number=4):
    """Bytes of W tiled to (batch, 1152, 10, 16, 8). ints in, int out."""
    numbers_in_W = 1152 * 10 * 16 * 8          # 1,474,560: one 16x8 matrix per (i, j)
    return batch * numbers_in_W * bytes_per_number

print(f"batch 128: {my_tiled_W_bytes(128) / 2**20:.0f} MiB")''',
    explanation="720 MiB at batch 128, for copies of numbers we already had — before the backward pass doubles it.",
))


check_predictions_broadcast = _register(Exercise(
    id="4.3", slug="broadcasting-not-tiling", title="Broadcasting vs tiling", chapter="04_predictions",
    section="Measured on this machine",
    func="my_predictions_broadcast", checker="check_predictions_broadcast",
    signature="my_predictions_broadcast(u, W)",
    inputs=[("u", "(batch, 1152, 8)", "batch, in_caps, in_dim"),
            ("W", "(1152, 10, 16, 8)", "in_caps, out_caps, out_dim, in_dim")],
    outputs=[("u_hat", "(batch, 1152, 10, 16)", "batch, in_caps, out_caps, out_dim")],
    reference_name="capslib.DigitCaps.predictions (transposed to the paper's layout)",
    make_cases=_prediction_cases, reference=_predictions_reference,
    out_dims=("batch", "in_caps", "out_caps", "out_dim"), track_memory=True, on_correct=_memory_note,
    mistakes=[
        Mistake("W_tiled_to_batch",
                _TILED_HINT.replace("{how}", "W[None] @ u[:, :, None, :, None] — matmul broadcasts the size-1 "
                                             "axes without copying"),
                detect=_tiled, always=True,
                example=lambda u, W: (np.tile(W[None], (u.shape[0], 1, 1, 1, 1))
                                      @ np.tile(u[:, :, None, :, None], (1, 1, 10, 1, 1)))[..., 0]),
        Mistake("not_squeezed",
                "almost: your result is (batch, 1152, 10, 16, 1) — matmul's (16, 8) @ (8, 1) leaves a column "
                "axis of size 1. Drop it: [..., 0] or np.squeeze(x, axis=-1).",
                wrong=lambda u, W: W[None] @ u[:, :, None, :, None]),
        Mistake("out_major_layout",
                "right numbers in capslib's out-major layout (batch, 10, 1152, 16). This exercise asks for "
                "(batch, 1152, 10, 16): put the out_caps axis after in_caps.",
                wrong=lambda u, W: (W[None] @ u[:, :, None, :, None])[..., 0].transpose(0, 2, 1, 3)),
        Mistake("missing_axes",
                "the axes do not line up for matmul. matmul multiplies the last two axes — W's (16, 8) by a "
                "(8, 1) column — and broadcasts the others, aligned from the right: W[None] is "
                "(1, 1152, 10, 16, 8), so u must be (batch, 1152, 1, 8, 1): u[:, :, None, :, None].",
                error=r"matmul|could not be broadcast|mismatch|Incompatible|core dimension",
                example=lambda u, W: (W[None] @ u[:, :, None, :])[..., 0]),
    ],
    task=("Compute the same `û` as exercise 4.1, `(batch, 1152, 10, 16)`, **without einsum and without copying W**: "
          "insert size-1 axes so that `np.matmul` (`@`) broadcasts `W`'s `(16, 8)` matrices against `u`'s 8-D "
          "columns. The checker measures your function's peak memory and tells you if `W` was tiled."),
    stub='''import numpy as np

def my_predictions_broadcast(u, W):
    """u (batch, 1152, 8), W (1152, 10, 16, 8) -> u_hat (batch, 1152, 10, 16), via matmul broadcasting."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_predictions_broadcast(u, W):
    """u (batch, 1152, 8), W (1152, 10, 16, 8) -> u_hat (batch, 1152, 10, 16), via matmul broadcasting."""
    W5 = W[None]                        # (1,     1152, 10, 16, 8)
    u5 = u[:, :, None, :, None]         # (batch, 1152,  1,  8, 1)  a column per (b, i)
    return (W5 @ u5)[..., 0]            # (batch, 1152, 10, 16, 1) -> (batch, 1152, 10, 16)''',
    explanation=("`W[None]` and `u[:, :, None, :, None]` are views: no numbers are copied. `@` multiplies the last two "
                 "axes and broadcasts the leading ones, so each `(16, 8)` matrix meets each example's column "
                 "without a tiled copy; compare the checker's peak memory with the tiled formulation."),
))


def _dc_reference(batch, in_caps, in_dim, out_caps, out_dim):
    import keras
    import capslib
    layer = capslib.DigitCaps(out_caps, out_dim, kernel_initializer="zeros")
    layer.build((None, in_caps, in_dim))
    u_hat = layer.predictions(keras.KerasTensor((batch, in_caps, in_dim)))    # symbolic: shapes only
    return {"W": tuple(int(d) for d in layer.W.shape), "u_hat": tuple(int(d) for d in u_hat.shape),
            "v": tuple(int(d) for d in layer.compute_output_shape((batch, in_caps, in_dim)))}


def _dc(f):
    return lambda b, ic, idim, oc, od: f(b, ic, idim, oc, od)


check_digit_caps_shapes = _register(Exercise(
    id="4.4", slug="digit-caps-shapes", title="A shape puzzle: a DigitCaps of any size", chapter="04_predictions",
    section="How long each takes (one small batch)", func="my_digit_caps_shapes",
    checker="check_digit_caps_shapes", signature="my_digit_caps_shapes(batch, in_caps, in_dim, out_caps, out_dim)",
    inputs=[("batch", "int", ""), ("in_caps", "int", ""), ("in_dim", "int", ""), ("out_caps", "int", ""),
            ("out_dim", "int", "")],
    outputs=[("shapes", "dict", "{'W': ..., 'u_hat': ..., 'v': ...}, each a tuple of ints, in capslib's layouts")],
    reference_name="a capslib.DigitCaps of that size",
    make_cases=lambda: [Case(a, f"batch={a[0]}, in_caps={a[1]}, in_dim={a[2]}, out_caps={a[3]}, out_dim={a[4]}")
                        for a in [(1, 1152, 8, 10, 16), (7, 1152, 8, 10, 16), (3, 252, 4, 47, 12),
                                  (128, 2048, 8, 10, 16)]],
    reference=_dc_reference,
    mistakes=[
        Mistake("W_dims_swapped",
                "your W ends (in_dim, out_dim). W_ij multiplies the column u_i (in_dim numbers) and gives "
                "û_j|i (out_dim numbers), so as a matrix it is out_dim rows × in_dim columns: "
                "W is (in_caps, out_caps, out_dim, in_dim).",
                wrong=_dc(lambda b, ic, idim, oc, od: {"W": (ic, oc, idim, od), "u_hat": (b, oc, ic, od),
                                                        "v": (b, oc, od)})),
        Mistake("u_hat_paper_layout",
                "your û is in the paper's layout (batch, in_caps, out_caps, out_dim). capslib's "
                "DigitCaps.predictions is out-major — (batch, out_caps, in_caps, out_dim) — so that routing's "
                "sums over i are batched matmuls.",
                wrong=_dc(lambda b, ic, idim, oc, od: {"W": (ic, oc, od, idim), "u_hat": (b, ic, oc, od),
                                                        "v": (b, oc, od)})),
        Mistake("W_with_batch",
                "your W has a batch axis. W is a weight, shared by every example: (in_caps, out_caps, "
                "out_dim, in_dim), no batch (a batch axis is what tiling would add).",
                wrong=_dc(lambda b, ic, idim, oc, od: {"W": (b, ic, oc, od, idim), "u_hat": (b, oc, ic, od),
                                                        "v": (b, oc, od)})),
        Mistake("v_per_input",
                "your v keeps the in_caps axis. Routing sums the predictions over i: v is one out_dim vector per "
                "output capsule, (batch, out_caps, out_dim).",
                wrong=_dc(lambda b, ic, idim, oc, od: {"W": (ic, oc, od, idim), "u_hat": (b, oc, ic, od),
                                                        "v": (b, oc, ic, od)})),
    ],
    task=("Write `my_digit_caps_shapes(batch, in_caps, in_dim, out_caps, out_dim)` returning a dict with the shapes "
          "(tuples of ints) of `W`, of the predictions `u_hat` as `capslib.DigitCaps.predictions` lays them out, "
          "and of the output `v`, for a DigitCaps of any size — e.g. 47 EMNIST classes, or 2048 primary capsules "
          "from 32×32 images."),
    stub='''def my_digit_caps_shapes(batch, in_caps, in_dim, out_caps, out_dim):
    """-> {"W": (...), "u_hat": (...), "v": (...)}: shapes as tuples of ints, capslib's layouts."""
    raise NotImplementedError''',
    solution='''def my_digit_caps_shapes(batch, in_caps, in_dim, out_caps, out_dim):
    """-> {"W": (...), "u_hat": (...), "v": (...)}: shapes as tuples of ints, capslib's layouts."""
    return {
        "W": (in_caps, out_caps, out_dim, in_dim),         # one out_dim x in_dim matrix per (i, j), no batch
        "u_hat": (batch, out_caps, in_caps, out_dim),      # out-major: j before i, as in û_j|i
        "v": (batch, out_caps, out_dim),                   # routing sums over i
    }''',
))


# =========================================================================== chapter 5: routing


def _u_hat(rng, batch, scale=0.2):
    """Predictions with some agreement: half the input capsules lean towards a shared direction per j."""
    base = rng.normal(size=(1, 1, 10, 16))
    u_hat = scale * rng.normal(size=(batch, 1152, 10, 16)) + scale * (rng.random((batch, 1152, 1, 1)) < 0.5) * base
    return u_hat.astype("float32")


def _dr(u_hat, r, coupling=False):
    import capslib
    out = capslib.dynamic_routing(u_hat, iterations=r, return_coupling=coupling)
    return tuple(_np(o) for o in out) if coupling else _np(out)


def _agreement(u_hat, v):
    return np.einsum("bijd,bjd->bij", u_hat.astype(np.float64), v.astype(np.float64))


def _step_case(rng, batch, iteration):
    """Iteration `iteration` of routing: b from the previous ones; expected from capslib.dynamic_routing."""
    u_hat = _u_hat(rng, batch)
    state = {}

    def build():
        b = np.zeros((batch, 1152, 10))
        for r in range(1, iteration):
            b = b + _agreement(u_hat, _dr(u_hat, r))
        v = _dr(u_hat, iteration)
        state["expected"] = (v, (b + _agreement(u_hat, v)).astype("float32"))
        return (u_hat, b.astype("float32"))

    label = (f"u_hat ({batch}, 1152, 10, 16), b ({batch}, 1152, 10) "
             + ("= 0 (iteration 1)" if iteration == 1 else
               f"from iteration{'s 1–' if iteration > 2 else ' '}{iteration - 1} (iteration {iteration})"))
    case = Case(build, label, batch=batch)
    case.expected = lambda: state["expected"]
    return case


def _step_cases():
    rng = _rng(51)
    return [_step_case(rng, 1, 1), _step_case(rng, 3, 1), _step_case(rng, 3, 2), _step_case(rng, 7, 3)]


def _step_np(u_hat, b, softmax_axis=2, squash=True, use_c=True, accumulate=True, per_dim=False, squash_axis=-1):
    c = _softmax(b, axis=softmax_axis)
    s = np.einsum("bij,bijd->bjd", c, u_hat) if use_c else u_hat.sum(axis=1)
    v = _squash_np(s, axis=squash_axis) if squash else s
    a = u_hat * v[:, None] if per_dim else _agreement(u_hat, v)
    if per_dim:
        return v, b[..., None] + a
    return v, (b + a if accumulate else a)


def _step_per_dim_student(u_hat, b):
    c = _softmax(b, axis=2)
    v = _squash_np(np.einsum("bij,bijd->bjd", c, u_hat))
    return v, b + u_hat * v[:, None, :, :]          # (b, 1152, 10) + (b, 1152, 10, 16): broadcast error


_SOFTMAX_HINT = ("your couplings sum to 1 over the input capsules i (axis 1) — the softmax must run over the "
                 "output capsules j: each input capsule splits its vote among the 10 digit capsules. Hint: "
                 "softmax(b, axis=-1) for b of shape (batch, 1152, 10). (Over i, every coupling starts at "
                 "1/1152 instead of 1/10.)")
_PER_DIM_HINT = ("you kept the routing logits per dimension: û * v is (batch, 1152, 10, 16). The agreement is one "
                 "number per (i, j), the dot product over the 16 dims: np.einsum(\"bijd,bjd->bij\", u_hat, v), or "
                 "(u_hat * v[:, None]).sum(-1).")

check_routing_iteration = _register(Exercise(
    id="5.1", slug="routing-iteration", title="One routing iteration", chapter="05_routing",
    section="Weighted sum, squash, agreement", func="my_routing_iteration", checker="check_routing_iteration",
    signature="my_routing_iteration(u_hat, b)",
    inputs=[("u_hat", "(batch, 1152, 10, 16)", "batch, in_caps, out_caps, out_dim"),
            ("b", "(batch, 1152, 10)", "batch, in_caps, out_caps: the logits so far")],
    outputs=[("v", "(batch, 10, 16)", "batch, out_caps, out_dim"),
             ("b_new", "(batch, 1152, 10)", "batch, in_caps, out_caps")],
    reference_name="capslib.dynamic_routing",
    make_cases=_step_cases, reference=None,
    out_dims=[("batch", "out_caps", "out_dim"), ("batch", "in_caps", "out_caps")],
    mistakes=[
        Mistake("softmax_over_inputs", _SOFTMAX_HINT, wrong=lambda u, b: _step_np(u, b, softmax_axis=1)),
        Mistake("logits_per_dimension", _PER_DIM_HINT,
                wrong=lambda u, b: _step_np(u, b, per_dim=True),
                error=r"\(\d+,\s*1152,\s*10\)\s*\(\d+,\s*1152,\s*10,\s*16\)|"
                      r"\(\d+,\s*1152,\s*10,\s*16\)\s*\(\d+,\s*1152,\s*10\)",
                example=_step_per_dim_student),
        Mistake("agreement_not_added",
                "your b_new is only this iteration's agreement: the logits accumulate, b_new = b + û·v. Your "
                "answer is right at iteration 1 (b = 0) and wrong after.",
                wrong=lambda u, b: _step_np(u, b, accumulate=False)),
        Mistake("no_squash",
                "your v is s itself: squash it, v = |s|²/(1 + |s|²) · s/|s| over the 16 dims, so its length "
                "is below 1.",
                wrong=lambda u, b: _step_np(u, b, squash=False)),
        Mistake("squash_over_wrong_axis",
                "you squashed s over the 10 output capsules (axis 1). Squash each digit capsule's own 16-D "
                "vector: the last axis of s (batch, 10, 16).",
                wrong=lambda u, b: _step_np(u, b, squash_axis=1)),
        Mistake("couplings_not_used",
                "your s ignores the couplings: s_j = Σ_i c_ij û_j|i weights every prediction by c = softmax(b): "
                "np.einsum(\"bij,bijd->bjd\", c, u_hat).",
                wrong=lambda u, b: _step_np(u, b, use_c=False)),
    ],
    task=("Write `my_routing_iteration(u_hat, b)`: **one** iteration of Procedure 1. From the logits `b` "
          "`(batch, 1152, 10)` compute the couplings `c`, the weighted sum `s`, `v = squash(s)` `(batch, 10, 16)`, "
          "and the updated logits `b_new = b + û·v` `(batch, 1152, 10)`; return `(v, b_new)`. `u_hat` is in the "
          "paper's layout `(batch, 1152, 10, 16)`. The checker runs iterations 1, 2 and 3 against "
          "`capslib.dynamic_routing`."),
    stub='''import numpy as np

def my_routing_iteration(u_hat, b):
    """u_hat (batch, 1152, 10, 16), b (batch, 1152, 10) -> v (batch, 10, 16), b_new (batch, 1152, 10)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_routing_iteration(u_hat, b):
    """u_hat (batch, 1152, 10, 16), b (batch, 1152, 10) -> v (batch, 10, 16), b_new (batch, 1152, 10)."""
    e = np.exp(b - b.max(axis=-1, keepdims=True))
    c = e / e.sum(axis=-1, keepdims=True)                 # softmax over j: (batch, 1152, 10)
    s = np.einsum("bij,bijd->bjd", c, u_hat)              # Σ_i c_ij û_j|i: (batch, 10, 16)
    n2 = np.sum(s ** 2, axis=-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)            # squash over the 16 dims
    b_new = b + np.einsum("bijd,bjd->bij", u_hat, v)      # agreement: a dot product over d
    return v, b_new''',
    explanation=("Three axes, three roles: the softmax runs over `j` (each input splits its vote), the weighted "
                 "sum contracts `i`, the agreement contracts `d`. Each einsum string says which."),
))


def _loop_cases():
    rng = _rng(52)
    rows = [(1, 3), (3, 1), (3, 2), (5, 3), (3, 5)]
    return [Case((_u_hat(rng, b), r), f"u_hat ({b}, 1152, 10, 16), iterations={r}", batch=b) for b, r in rows]


def _loop_np(u_hat, r, softmax_axis=2, per_dim=False, accumulate=True):
    b = np.zeros(u_hat.shape if per_dim else u_hat.shape[:3])
    for _ in range(r):
        c = _softmax(b, axis=softmax_axis)
        s = (c * u_hat).sum(axis=1) if per_dim else np.einsum("bij,bijd->bjd", c, u_hat)
        v = _squash_np(s)
        a = u_hat * v[:, None] if per_dim else _agreement(u_hat, v)
        b = b + a if accumulate else a
    return v


def _b_not_reset(run):
    # (a) the same input twice in a row: a second answer that differs means state survives between calls
    for i in range(len(run.cases)):
        answers = []
        for _ in range(2):
            again = run.call(i)
            if again.error is not None or again.value is None:
                break
            value, problem = _normalize(again.value, run.expected(i), "x")
            if problem is not None:
                break
            answers.append(value)
        if len(answers) == 2 and not _close(answers[0], answers[1], 1e-6, 1e-7):
            return {"where": "the same input, passed twice in a row, gets two different answers: "
                              "something (b?) survives from one call to the next"}
    # (b) examples: example 0 right, later examples wrong
    for i, c in enumerate(run.cases):
        if (c.batch or 0) >= 3 and not run.ok(i):
            got, want = run.got[i], run.expected(i)
            if isinstance(got, np.ndarray) and got.shape == want.shape \
                    and _close(got[:1], want[:1], run.ex.rtol, run.ex.atol) \
                    and not _close(got[1:], want[1:], run.ex.rtol, run.ex.atol):
                return {"where": "your first example is right and the next ones are not: b was carried "
                                  "from one example to the next"}
    return None


def _routing_b_across_examples(u_hat, iterations=3):
    b = np.zeros(u_hat.shape[1:3])                      # created once, outside the loop over examples
    out = []
    for x in u_hat:
        for _ in range(iterations):
            c = _softmax(b, axis=1)
            v = _squash_np(np.einsum("ij,ijd->jd", c, x))
            b = b + np.einsum("ijd,jd->ij", x, v)
        out.append(v)
    return np.stack(out)


check_routing = _register(Exercise(
    id="5.2", slug="routing-loop", title="The full routing loop", chapter="05_routing",
    section="The full loop, checked against capslib", func="my_routing", checker="check_routing",
    signature="my_routing(u_hat, iterations=3)",
    inputs=[("u_hat", "(batch, 1152, 10, 16)", "batch, in_caps, out_caps, out_dim"),
            ("iterations", "int", "r ≥ 1")],
    outputs=[("v", "(batch, 10, 16)", "batch, out_caps, out_dim")],
    reference_name="capslib.dynamic_routing",
    make_cases=_loop_cases, reference=lambda u, r: _dr(u, r),
    out_dims=("batch", "out_caps", "out_dim"),
    mistakes=[
        Mistake("softmax_over_inputs", _SOFTMAX_HINT, wrong=lambda u, r: _loop_np(u, r, softmax_axis=1)),
        Mistake("b_not_reset",
                "b is not reset: {where}. b_ij starts at 0 for every example and every call — create it inside "
                "your function (np.zeros(u_hat.shape[:3])), with a batch axis, before the loop.",
                detect=_b_not_reset, example=_routing_b_across_examples),
        Mistake("wrong_iteration_count",
                "your loop runs {variant}. Procedure 1 runs `iterations` times, each computing c, s, v and then "
                "updating b; the v of the last pass is the answer.",
                wrong={"one iteration too many": lambda u, r: _dr(u, r + 1),
                       "one iteration too few": lambda u, r: _dr(u, r - 1) if r > 1 else _SKIP,
                       "3 times whatever `iterations` says": lambda u, r: _dr(u, 3)}),
        Mistake("logits_per_dimension", _PER_DIM_HINT.replace("û * v is", "your b is"),
                wrong=lambda u, r: _loop_np(u, r, per_dim=True)),
        Mistake("agreement_not_added",
                "your logits are replaced by each iteration's agreement instead of accumulating: "
                "b = b + û·v.",
                wrong=lambda u, r: _loop_np(u, r, accumulate=False)),
    ],
    task=("Write `my_routing(u_hat, iterations=3)`: Procedure 1 in full — `b = 0`, then `iterations` times: "
          "couplings, weighted sum, squash, agreement. Return `v` `(batch, 10, 16)`. You may reuse your "
          "`my_routing_iteration`. The checker compares with `capslib.dynamic_routing` for 1, 2, 3 and 5 iterations, "
          "calls your function twice on the same input, and looks at each example of a batch."),
    stub='''import numpy as np

def my_routing(u_hat, iterations=3):
    """u_hat (batch, 1152, 10, 16) -> v (batch, 10, 16), after `iterations` rounds of routing."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_routing(u_hat, iterations=3):
    """u_hat (batch, 1152, 10, 16) -> v (batch, 10, 16), after `iterations` rounds of routing."""
    b = np.zeros(u_hat.shape[:3])                          # (batch, 1152, 10): fresh, every call and example
    for _ in range(iterations):
        e = np.exp(b - b.max(axis=-1, keepdims=True))
        c = e / e.sum(axis=-1, keepdims=True)              # softmax over j
        s = np.einsum("bij,bijd->bjd", c, u_hat)           # (batch, 10, 16)
        n2 = np.sum(s ** 2, axis=-1, keepdims=True)
        v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)         # squash
        b = b + np.einsum("bijd,bjd->bij", u_hat, v)       # agreement
    return v''',
    explanation=("`b` is a local array created with a batch axis: every example routes on its own, and a second "
                 "call starts from zero again. (The last agreement update does not change the returned `v`; "
                 "`capslib` skips it.)"),
))


def _coupling_cases():
    rng = _rng(53)
    out = []
    for b, j in [(1, 0), (3, 3), (7, 9)]:
        c = _softmax(2.0 * rng.normal(size=(b, 1152, 10)), axis=2).astype("float32")
        out.append(Case((c, j), f"c ({b}, 1152, 10), j={j}", batch=b))
    return out


def _coupling_map_reference(c, j):
    return c[:, :, j].reshape(c.shape[0], 6, 6, 32).mean(axis=-1)


check_coupling_map = _register(Exercise(
    id="5.3", slug="coupling-map", title="A shape puzzle: where does a digit capsule listen?", chapter="05_routing",
    section="On a real digit", func="my_coupling_map", checker="check_coupling_map",
    signature="my_coupling_map(c, j)",
    inputs=[("c", "(batch, 1152, 10)", "batch, in_caps, out_caps: couplings"), ("j", "int", "a digit capsule")],
    outputs=[("map", "(batch, 6, 6)", "batch, row, col: mean coupling to j over the 32 types")],
    reference_name="capslib's capsule order i = (row·6 + col)·32 + t",
    make_cases=_coupling_cases, reference=_coupling_map_reference,
    out_dims=("batch", "row", "col"),
    mistakes=[
        Mistake("types_major_order",
                "you unflattened i as (type, row, col). capslib's PrimaryCaps numbers the capsules "
                "i = (row·6 + col)·32 + t — position first, type last — so reshape to (batch, 6, 6, 32) and "
                "average the last axis.",
                wrong=lambda c, j: c[:, :, j].reshape(c.shape[0], 32, 6, 6).mean(axis=1)),
        Mistake("sum_not_mean",
                "you summed over the 32 types; the task asks for their mean (divide by 32).",
                wrong=lambda c, j: c[:, :, j].reshape(c.shape[0], 6, 6, 32).sum(axis=-1)),
        Mistake("rows_cols_swapped",
                "your map is transposed: rows and columns swapped. i = (row·6 + col)·32 + t: the row is the "
                "slower index.",
                wrong=lambda c, j: c[:, :, j].reshape(c.shape[0], 6, 6, 32).mean(axis=-1).transpose(0, 2, 1)),
        Mistake("picked_input_capsule",
                "c[:, j] picks input capsule j, not output capsule j: the output capsules are c's *last* axis, "
                "c[:, :, j] (batch, 1152).",
                error=r"cannot reshape array of size \d+ into shape",
                example=lambda c, j: c[:, j].reshape(c.shape[0], 6, 6, 32).mean(axis=-1)),
    ],
    task=("Routing gives couplings `c` `(batch, 1152, 10)`. Write `my_coupling_map(c, j)` returning, for digit capsule "
          "`j`, a `(batch, 6, 6)` map: at each of the 6×6 positions, the **mean** coupling to `j` of the 32 capsule "
          "types there. Use capslib's capsule order `i = (row·6 + col)·32 + t`."),
    stub='''import numpy as np

def my_coupling_map(c, j):
    """c (batch, 1152, 10), j int -> (batch, 6, 6): mean over the 32 types of the couplings to j."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_coupling_map(c, j):
    """c (batch, 1152, 10), j int -> (batch, 6, 6): mean over the 32 types of the couplings to j."""
    to_j = c[:, :, j]                                     # (batch, 1152)
    grid = to_j.reshape(c.shape[0], 6, 6, 32)             # i = (row*6 + col)*32 + t
    return grid.mean(axis=-1)                             # (batch, 6, 6)''',
    explanation="`capslib.viz.plot_couplings(c[0], grid=(6, 6, 32))` draws exactly these maps, one per digit capsule.",
))


# =========================================================================== chapter 6: losses and decoder


def _length_cases():
    rng = _rng(61)
    import capslib
    out = []
    for b in (1, 3, 7):
        out.append(Case((_np(capslib.squash(rng.normal(size=(b, 10, 16)).astype("float32"))),), batch=b))
    v = _np(capslib.squash(rng.normal(size=(2, 10, 16)).astype("float32")))
    v[1, 4] = 0.0
    out.append(Case((v,), "v (2, 10, 16) with a zero capsule", batch=2))
    return out


check_capsule_lengths = _register(Exercise(
    id="6.1", slug="capsule-lengths", title="Capsule lengths", chapter="06_losses_and_decoder",
    section="The margin loss (Eq. 4)", func="my_capsule_lengths", checker="check_capsule_lengths",
    signature="my_capsule_lengths(v)",
    inputs=[("v", "(batch, 10, 16)", "batch, out_caps, out_dim")],
    outputs=[("lengths", "(batch, 10)", "batch, classes: each in [0, 1)")],
    reference_name="capslib.capsule_length",
    make_cases=_length_cases, reference=lambda v: _np(__import__("capslib").capsule_length(v)),
    out_dims=("batch", "classes"), atol=1e-4,
    mistakes=[
        Mistake("norm_over_capsules",
                "you took the norm over the 10 capsules (axis 1), giving (batch, 16). A capsule's length is the "
                "norm of its own 16 numbers: the last axis, np.sqrt(np.sum(v**2, axis=-1)) → (batch, 10).",
                wrong=lambda v: np.sqrt(np.sum(v * v, axis=1))),
        Mistake("forgot_sqrt",
                "those are squared lengths |v|²: take the square root.",
                wrong=lambda v: np.sum(v * v, axis=-1)),
        Mistake("sum_not_norm",
                "you added the components; the length is the Euclidean norm, sqrt(Σ_d v_d²) — components can "
                "be negative.",
                wrong={"sum": lambda v: v.sum(axis=-1), "sum of |v_d|": lambda v: np.abs(v).sum(axis=-1)}),
        Mistake("kept_dims",
                "right numbers, shape (batch, 10, 1): drop the summed axis (no keepdims here) — the lengths are "
                "(batch, 10), one probability per class.",
                wrong=lambda v: np.sqrt(np.sum(v * v, axis=-1, keepdims=True))),
    ],
    task=("Write `my_capsule_lengths(v)`: the length of each digit capsule, `(batch, 10, 16)` → `(batch, 10)`. "
          "These are the class probabilities the margin loss reads."),
    stub='''import numpy as np

def my_capsule_lengths(v):
    """v (batch, 10, 16) -> lengths (batch, 10)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_capsule_lengths(v):
    """v (batch, 10, 16) -> lengths (batch, 10)."""
    return np.sqrt(np.sum(v ** 2, axis=-1))''',
    explanation=("`np.linalg.norm(v, axis=-1)` is the same. (capslib adds 1e-9 inside the sqrt so the gradient "
                 "stays finite at 0.)"),
))


def _margin_cases():
    rng = _rng(62)
    out = []
    for b in (1, 3, 7, 8):
        y = np.eye(10, dtype="float32")[rng.integers(0, 10, b)]
        lengths = rng.uniform(0, 1, (b, 10)).astype("float32")
        out.append(Case((y, lengths), batch=b))
    return out


def _margin_np(y, lengths, m_plus=0.9, m_minus=0.1, lam=0.5, relu=True, present_lam=1.0, reduce="sum",
               batch="mean", square=True):
    f = (lambda x: np.maximum(x, 0.0)) if relu else (lambda x: x)
    p = f(m_plus - lengths)
    a = f(lengths - m_minus)
    if square:
        p, a = p ** 2, a ** 2
    per = y * present_lam * p + lam * (1 - y) * a
    per = per.sum(axis=-1) if reduce == "sum" else per.mean(axis=-1)
    if batch == "none":
        return per
    return per.sum() if batch == "sum" else per.mean()


check_margin_loss = _register(Exercise(
    id="6.2", slug="margin-loss", title="The margin loss", chapter="06_losses_and_decoder",
    section="By hand, for a batch of four", func="my_margin_loss", checker="check_margin_loss",
    signature="my_margin_loss(y, lengths)",
    inputs=[("y", "(batch, 10)", "one-hot labels"), ("lengths", "(batch, 10)", "capsule lengths in [0, 1)")],
    outputs=[("loss", "a number", "Eq. 4 summed over the 10 classes, averaged over the batch")],
    reference_name="capslib.margin_loss",
    make_cases=_margin_cases,
    reference=lambda y, lengths: float(_np(__import__("capslib").margin_loss(y, lengths))),
    rtol=1e-4, atol=1e-6,
    mistakes=[
        Mistake("margins_swapped",
                "m⁺ and m⁻ are swapped: the true class is pushed *above* m⁺ = 0.9 (penalty max(0, 0.9 − |v_k|)²), "
                "every other class *below* m⁻ = 0.1 (penalty max(0, |v_k| − 0.1)²).",
                wrong=lambda y, l: _margin_np(y, l, m_plus=0.1, m_minus=0.9)),
        Mistake("lambda_missing",
                "the absent classes' term needs its weight λ = 0.5: L_k = T_k max(0, m⁺ − |v_k|)² + "
                "λ (1 − T_k) max(0, |v_k| − m⁻)².",
                wrong=lambda y, l: _margin_np(y, l, lam=1.0)),
        Mistake("lambda_on_present",
                "λ = 0.5 weighs the *absent* classes (1 − T_k), not the present one.",
                wrong={"on both": lambda y, l: _margin_np(y, l, present_lam=0.5),
                       "on the present only": lambda y, l: _margin_np(y, l, present_lam=0.5, lam=1.0)}),
        Mistake("mean_over_classes",
                "you averaged over the 10 classes; Eq. 4's total loss is the *sum* of L_k over the classes "
                "(then averaged over the batch).",
                wrong=lambda y, l: _margin_np(y, l, reduce="mean")),
        Mistake("summed_over_batch",
                "you summed over the batch: average it (the loss should not grow with the batch size).",
                wrong=lambda y, l: _margin_np(y, l, batch="sum")),
        Mistake("no_relu",
                "the max(0, ·) is missing: a capsule already beyond its margin must cost nothing, not be "
                "pushed further (your square turns its negative margin into a penalty).",
                wrong=lambda y, l: _margin_np(y, l, relu=False)),
        Mistake("not_squared",
                "the penalties are squared: max(0, m⁺ − |v_k|)².",
                wrong=lambda y, l: _margin_np(y, l, square=False)),
        Mistake("not_reduced",
                "you returned one loss per example, (batch,): return a single number, their mean.",
                wrong=lambda y, l: _margin_np(y, l, batch="none")),
    ],
    task=("Write `my_margin_loss(y, lengths)`, Eq. 4 with $m^+ = 0.9$, $m^- = 0.1$, $\\lambda = 0.5$: "
          "$L_k = T_k \\max(0, m^+ - |v_k|)^2 + \\lambda (1 - T_k) \\max(0, |v_k| - m^-)^2$, summed over the 10 "
          "classes and averaged over the batch. `y` one-hot `(batch, 10)`, `lengths` `(batch, 10)`; return one "
          "number."),
    stub='''import numpy as np

def my_margin_loss(y, lengths):
    """y one-hot (batch, 10), lengths (batch, 10) -> a number: Eq. 4, sum over classes, mean over batch."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_margin_loss(y, lengths, m_plus=0.9, m_minus=0.1, lam=0.5):
    """y one-hot (batch, 10), lengths (batch, 10) -> a number: Eq. 4, sum over classes, mean over batch."""
    present = y * np.maximum(0.0, m_plus - lengths) ** 2                  # (batch, 10)
    absent = lam * (1 - y) * np.maximum(0.0, lengths - m_minus) ** 2      # (batch, 10)
    return float(np.mean(np.sum(present + absent, axis=-1)))''',
))


def _mask_cases():
    rng = _rng(63)
    out = []
    import capslib
    for b in (1, 3, 7):
        v = _np(capslib.squash(rng.normal(size=(b, 10, 16)).astype("float32")))
        longest = np.linalg.norm(v, axis=-1).argmax(axis=-1)
        labels = (longest + rng.integers(1, 10, b)) % 10              # never the longest capsule
        out.append(Case((v, np.eye(10, dtype="float32")[labels]), batch=b))
    return out


def _mask_np(v, idx, flatten=True, order="jd"):
    m = v * np.eye(v.shape[1], dtype=v.dtype)[idx][:, :, None]
    if not flatten:
        return m
    if order == "dj":
        m = m.transpose(0, 2, 1)
    return m.reshape(v.shape[0], -1)


check_mask_by_label = _register(Exercise(
    id="6.3", slug="mask-by-label", title="Masking by label", chapter="06_losses_and_decoder",
    section="Masking: one capsule for the decoder", func="my_mask_by_label", checker="check_mask_by_label",
    signature="my_mask_by_label(v, y)",
    inputs=[("v", "(batch, 10, 16)", "batch, out_caps, out_dim"), ("y", "(batch, 10)", "one-hot labels")],
    outputs=[("masked", "(batch, 160)", "batch, 10·16: zeros except the label's capsule")],
    reference_name="capslib.Mask()(v, y)",
    make_cases=_mask_cases,
    reference=lambda v, y: _np(__import__("capslib").Mask()(v, y)),
    out_dims=("batch", "10·16"),
    mistakes=[
        Mistake("longest_not_label",
                "you kept the longest capsule. In training the decoder gets the capsule of the *true* class — "
                "that is what teaches each capsule to encode its own digit: multiply by y, not by the argmax "
                "of the lengths. (The checker's labels are never the longest capsule.)",
                wrong=lambda v, y: _mask_np(v, np.linalg.norm(v, axis=-1).argmax(-1))),
        Mistake("not_flattened",
                "right values, shape (batch, 10, 16): flatten to (batch, 160) for the decoder's first Dense "
                "layer.",
                wrong=lambda v, y: _mask_np(v, y.argmax(-1), flatten=False)),
        Mistake("only_selected_capsule",
                "you returned only the label's 16 numbers. The decoder gets all 160 slots with zeros "
                "elsewhere: *where* the non-zeros are tells it which class it is drawing.",
                wrong=lambda v, y: v[np.arange(v.shape[0]), y.argmax(-1)]),
        Mistake("flattened_dims_first",
                "you flattened (batch, 16, 10): capslib (and the decoder's weights) read the 160 numbers capsule "
                "by capsule — slot j·16 + d. Flatten (batch, 10, 16) directly.",
                wrong=lambda v, y: _mask_np(v, y.argmax(-1), order="dj")),
    ],
    task=("Write `my_mask_by_label(v, y)`: keep only the capsule of the true class (labels one-hot `(batch, 10)`), "
          "zero the other nine, and flatten: `(batch, 10, 16)` → `(batch, 160)`. This is what the decoder sees "
          "during training."),
    stub='''import numpy as np

def my_mask_by_label(v, y):
    """v (batch, 10, 16), y one-hot (batch, 10) -> (batch, 160), only the label's capsule non-zero."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_mask_by_label(v, y):
    """v (batch, 10, 16), y one-hot (batch, 10) -> (batch, 160), only the label's capsule non-zero."""
    masked = v * y[:, :, None]                    # (batch, 10, 16) * (batch, 10, 1)
    return masked.reshape(v.shape[0], -1)         # (batch, 160)''',
))


def _mask_length_cases():
    rng = _rng(64)
    out = []
    for b in (1, 3, 7):
        v = np.zeros((b, 10, 16), "float32")
        for n in range(b):
            j_long, j_peak, j_sum = rng.permutation(10)[:3]
            v[n] = 0.02 * rng.normal(size=(10, 16))
            v[n, j_long] = 0.2 * (np.arange(16) % 2 * 2 - 1)                                    # length 0.8, sum 0
            v[n, j_peak] = 0.0
            v[n, j_peak, 3] = 0.6                                                             # big component
            v[n, j_sum] = 0.1                                                                 # all positive
        out.append(Case((v,), batch=b))
    return out


check_mask_by_length = _register(Exercise(
    id="6.4", slug="mask-by-length", title="Masking by the longest capsule", chapter="06_losses_and_decoder",
    section="Masking: one capsule for the decoder", func="my_mask_by_length", checker="check_mask_by_length",
    signature="my_mask_by_length(v)",
    inputs=[("v", "(batch, 10, 16)", "batch, out_caps, out_dim")],
    outputs=[("masked", "(batch, 160)", "batch, 10·16: zeros except the longest capsule")],
    reference_name="capslib.Mask()(v)",
    make_cases=_mask_length_cases,
    reference=lambda v: _np(__import__("capslib").Mask()(v)),
    out_dims=("batch", "10·16"),
    mistakes=[
        Mistake("largest_component",
                "you picked the capsule with the largest single component. The prediction is the *longest* "
                "capsule: argmax of the lengths np.linalg.norm(v, axis=-1), (batch, 10).",
                wrong={"argmax of the components": lambda v: _mask_np(v, v.max(axis=-1).argmax(-1)),
                       "argmax over all 160 numbers":
                           lambda v: _mask_np(v, v.reshape(v.shape[0], -1).argmax(-1) // 16)}),
        Mistake("largest_sum",
                "you picked the capsule whose components add up to the most; components can be negative. Use "
                "the length: np.linalg.norm(v, axis=-1).argmax(-1).",
                wrong=lambda v: _mask_np(v, v.sum(axis=-1).argmax(-1))),
        Mistake("shortest",
                "you kept the shortest capsule (argmin): the prediction is the longest one (argmax).",
                wrong=lambda v: _mask_np(v, np.linalg.norm(v, axis=-1).argmin(-1))),
        Mistake("not_flattened",
                "right values, shape (batch, 10, 16): flatten to (batch, 160).",
                wrong=lambda v: _mask_np(v, np.linalg.norm(v, axis=-1).argmax(-1), flatten=False)),
    ],
    task=("At inference there is no label: write `my_mask_by_length(v)` that keeps the **longest** capsule (the "
          "predicted class), zeros the others and flattens, `(batch, 10, 16)` → `(batch, 160)`."),
    stub='''import numpy as np

def my_mask_by_length(v):
    """v (batch, 10, 16) -> (batch, 160), only the longest capsule non-zero."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_mask_by_length(v):
    """v (batch, 10, 16) -> (batch, 160), only the longest capsule non-zero."""
    lengths = np.linalg.norm(v, axis=-1)                  # (batch, 10)
    keep = np.eye(v.shape[1])[lengths.argmax(axis=-1)]     # one-hot of the longest: (batch, 10)
    return (v * keep[:, :, None]).reshape(v.shape[0], -1)  # (batch, 160)''',
))


def _decoder_reference(num_classes, capsule_dim, image_shape):
    import capslib
    n_in = capslib.Mask().compute_output_shape((None, num_classes, capsule_dim))[1]
    return (int(n_in), int(capslib.Decoder(image_shape).dense[-1].units))


check_decoder_sizes = _register(Exercise(
    id="6.5", slug="decoder-sizes", title="The decoder's input size", chapter="06_losses_and_decoder",
    section="The decoder: 160 → 512 → 1024 → 784", func="my_decoder_sizes", checker="check_decoder_sizes",
    signature="my_decoder_sizes(num_classes, capsule_dim, image_shape)",
    inputs=[("num_classes", "int", ""), ("capsule_dim", "int", ""), ("image_shape", "(height, width, channels)", "")],
    outputs=[("n_in", "int", "numbers the decoder reads"), ("n_out", "int", "numbers its last layer makes")],
    reference_name="capslib.Mask and capslib.Decoder",
    make_cases=lambda: [Case(a, f"num_classes={a[0]}, capsule_dim={a[1]}, image_shape={a[2]}") for a in
                        [(10, 16, (28, 28, 1)), (47, 16, (28, 28, 1)), (10, 16, (32, 32, 3)), (5, 8, (48, 48, 1))]],
    reference=_decoder_reference,
    mistakes=[
        Mistake("one_capsule_only",
                "the decoder does not read one 16-D capsule: it reads the whole masked tensor, all "
                "num_classes × capsule_dim slots (zeros except one capsule), flattened.",
                wrong=lambda n, d, shape: (d, shape[0] * shape[1] * shape[2])),
        Mistake("forgot_channels",
                "the last layer makes every number of the image: height × width × channels (3 for colour).",
                wrong=lambda n, d, shape: (n * d, shape[0] * shape[1])),
        Mistake("classes_only",
                "the decoder reads the masked capsules, num_classes × capsule_dim numbers, not one number per class.",
                wrong=lambda n, d, shape: (n, shape[0] * shape[1] * shape[2])),
    ],
    task=("Write `my_decoder_sizes(num_classes, capsule_dim, image_shape)` returning `(n_in, n_out)`: how many numbers "
          "the decoder's first Dense layer reads, and how many its last Dense layer outputs (before the reshape to "
          "the image). MNIST gives `(160, 784)`; try EMNIST's 47 classes and 32×32×3 images."),
    stub='''def my_decoder_sizes(num_classes, capsule_dim, image_shape):
    """-> (n_in, n_out): the decoder reads n_in numbers and makes n_out. (10, 16, (28, 28, 1)) -> (160, 784)."""
    raise NotImplementedError''',
    solution='''def my_decoder_sizes(num_classes, capsule_dim, image_shape):
    """-> (n_in, n_out): the decoder reads n_in numbers and makes n_out. (10, 16, (28, 28, 1)) -> (160, 784)."""
    height, width, channels = image_shape
    n_in = num_classes * capsule_dim          # the masked capsules, flattened
    n_out = height * width * channels         # one sigmoid per pixel value
    return (n_in, n_out)''',
))


_LAYERS = ("conv1", "primary_caps", "digit_caps", "decoder")


@lru_cache(maxsize=None)
def _capsnet_counts(conv_filters, primary_types, primary_dim, num_classes, digit_dim):
    import capslib
    m = capslib.CapsNet(conv_filters=conv_filters, primary_types=primary_types, primary_dim=primary_dim,
                        num_classes=num_classes, digit_dim=digit_dim)
    return {name: int(getattr(m, name).count_params()) for name in _LAYERS}


def _pc_parts(F, T, D, N, Dd):
    in_caps = 6 * 6 * T
    return {
        "conv1": (81 * 1 * F, F),
        "primary_caps": (81 * F * T * D, T * D),
        "digit_caps": (in_caps * N * Dd * D, 0),
        "decoder": (N * Dd * 512 + 512 * 1024 + 1024 * 784, 512 + 1024 + 784),
    }


def _counts_with(F, T, D, N, Dd, **changes):
    parts = _pc_parts(F, T, D, N, Dd)
    out = {k: w + b for k, (w, b) in parts.items()}
    for k, f in changes.items():
        out[k] = f(parts)
    return out


_PARAM_MISTAKES = [
    ("forgot_biases", "you left out the biases of {layers}: every Conv2D filter and every Dense unit has one "
                      "(a Conv2D has k·k·C_in·C_out + C_out parameters, a Dense n_in·n_out + n_out).",
     lambda p, k: p[k][0]),
    ("W_without_classes", "your DigitCaps count lacks the 10 classes: W holds one 16×8 matrix per (input i, "
                          "output j) pair, 1152 × 10 × 16 × 8.",
     lambda p, k: p[k][0] // (p["_N"]) if k == "digit_caps" else None),
    ("conv_input_channels", "your {layers} count ignores the input channels: each filter is k × k × C_in — for the "
                            "primary conv C_in is conv1's 256 filters.",
     lambda p, k: 81 * p["_TD"] + p["_TD"] if k == "primary_caps" else None),
    ("decoder_from_one_capsule", "your decoder starts from one capsule of 16: it reads all 10 × 16 = 160 masked "
                                 "numbers.",
     lambda p, k: p["decoder"][0] - (p["_N"] - 1) * p["_Dd"] * 512 + p["decoder"][1] if k == "decoder" else None),
    ("positions_forgotten", "your DigitCaps count uses 32 input capsules: there are 6 × 6 positions × 32 types = 1152.",
     lambda p, k: p[k][0] // 36 if k == "digit_caps" else None),
]


_PARAM_MISTAKES_BY_NAME = {name: {"hint": hint, "fn": fn} for name, hint, fn in _PARAM_MISTAKES}


def _param_student(mistake):
    """A my_parameter_counts that makes `mistake` (for the tests)."""
    def my_parameter_counts(conv_filters=256, primary_types=32, primary_dim=8, num_classes=10, digit_dim=16):
        F, T, D, N, Dd = conv_filters, primary_types, primary_dim, num_classes, digit_dim
        parts = _pc_parts(F, T, D, N, Dd)
        parts.update(_N=N, _Dd=Dd, _TD=T * D)
        wrong = dict(_PARAM_MISTAKES_BY_NAME[mistake])
        out = {k: w + b for k, (w, b) in _pc_parts(F, T, D, N, Dd).items()}
        layers = ("conv1", "primary_caps", "decoder") if mistake == "forgot_biases" else _LAYERS
        for k in layers:
            w = wrong["fn"](parts, k)
            if w is not None:
                out[k] = w
        return out
    return my_parameter_counts


def _judge_parameters(run):
    ex = run.ex
    for i in range(len(run.cases)):
        if run.ok(i):
            continue
        F, T, D, N, Dd = run.args(i)
        parts = _pc_parts(F, T, D, N, Dd)
        parts.update(_N=N, _Dd=Dd, _TD=T * D)
        got, want = run.got[i], run.expected(i)
        for name, hint, wrong in _PARAM_MISTAKES:
            layers = [k for k in _LAYERS if not _close(got[k], want[k], 0, 0)
                      and (w := wrong(parts, k)) is not None and got[k] == w]
            if layers:
                return _verdict(ex, "mistake", hint.format(layers=" and ".join(layers)), name, run.label(i))
        off = [f"{k}: expected {want[k]:,}, got {got[k]:,}" for k in _LAYERS if not _close(got[k], want[k], 0, 0)]
        return _verdict(ex, "wrong", "wrong counts — " + "; ".join(off) + ".", None, run.label(i))
    return None


check_parameter_counts = _register(Exercise(
    id="6.6", slug="parameter-counts", title="Counting the parameters of each layer", chapter="06_losses_and_decoder",
    section="The decoder: 160 → 512 → 1024 → 784", func="my_parameter_counts", checker="check_parameter_counts",
    signature="my_parameter_counts(conv_filters=256, primary_types=32, primary_dim=8, num_classes=10, digit_dim=16)",
    inputs=[("conv_filters", "int", "conv1's filters"), ("primary_types", "int", "capsule types"),
            ("primary_dim", "int", "their dims"), ("num_classes", "int", "digit capsules"),
            ("digit_dim", "int", "their dims")],
    outputs=[("counts", "dict", "{'conv1': int, 'primary_caps': int, 'digit_caps': int, 'decoder': int}")],
    reference_name="count_params() of a capslib.CapsNet built with those sizes",
    make_cases=lambda: [Case(a, "conv_filters={}, primary_types={}, primary_dim={}, num_classes={}, digit_dim={}"
                             .format(*a)) for a in [(256, 32, 8, 10, 16), (64, 8, 4, 5, 6)]],
    reference=lambda *a: _capsnet_counts(*a),
    judge=_judge_parameters,
    mistakes=[Mistake(name, hint, example=_param_student(name)) for name, hint, _ in _PARAM_MISTAKES],
    task=("Write `my_parameter_counts(...)` returning a dict with the number of parameters of `conv1`, `primary_caps`, "
          "`digit_caps` and `decoder`, for a CapsNet on 28×28×1 images with the given sizes (the primary conv has "
          "`primary_types × primary_dim` filters of 9×9; the decoder is 512 → 1024 → 784). The checker compares with "
          "real capslib layers, for the paper's sizes and for a small network."),
    stub='''def my_parameter_counts(conv_filters=256, primary_types=32, primary_dim=8, num_classes=10, digit_dim=16):
    """-> {"conv1": int, "primary_caps": int, "digit_caps": int, "decoder": int}."""
    raise NotImplementedError''',
    solution='''def my_parameter_counts(conv_filters=256, primary_types=32, primary_dim=8, num_classes=10, digit_dim=16):
    """-> {"conv1": int, "primary_caps": int, "digit_caps": int, "decoder": int}."""
    def conv(k, c_in, c_out):
        return k * k * c_in * c_out + c_out               # weights + one bias per filter
    def dense(n_in, n_out):
        return n_in * n_out + n_out
    primary_filters = primary_types * primary_dim
    in_caps = 6 * 6 * primary_types                       # 28 -> 20 -> 6
    return {
        "conv1": conv(9, 1, conv_filters),
        "primary_caps": conv(9, conv_filters, primary_filters),
        "digit_caps": in_caps * num_classes * digit_dim * primary_dim,   # W only, no bias in the paper
        "decoder": dense(num_classes * digit_dim, 512) + dense(512, 1024) + dense(1024, 28 * 28),
    }''',
    explanation=("For the paper's sizes: 20,992 + 5,308,672 + 1,474,560 + 1,411,344 = 8,215,568. Two thirds of the "
                 "network is the primary conv; routing itself has no parameters."),
))


def _recon_cases():
    rng = _rng(67)
    return [Case((rng.random((b, 28, 28, 1)).astype("float32"), rng.random((b, 28, 28, 1)).astype("float32")),
                 batch=b) for b in (1, 3, 7)]


check_reconstruction_loss = _register(Exercise(
    id="6.7", slug="reconstruction-loss", title="A shape puzzle: the reconstruction loss",
    chapter="06_losses_and_decoder",
    section="The reconstruction loss, and why it is scaled down", func="my_reconstruction_loss",
    checker="check_reconstruction_loss", signature="my_reconstruction_loss(images, reconstructions)",
    inputs=[("images", "(batch, 28, 28, 1)", ""), ("reconstructions", "(batch, 28, 28, 1)", "")],
    outputs=[("loss", "a number", "0.0005 × per-image sum of squared errors, averaged over the batch")],
    reference_name="capslib.reconstruction_loss",
    make_cases=_recon_cases,
    reference=lambda x, r: float(_np(__import__("capslib").reconstruction_loss(x, r))),
    atol=1e-7,
    mistakes=[
        Mistake("mean_over_pixels",
                "you averaged over the 784 pixels (a mean squared error): the paper *sums* the squared errors of "
                "an image, then scales by 0.0005 — that is why the weight is so small.",
                wrong=lambda x, r: 0.0005 * np.mean((x - r) ** 2)),
        Mistake("weight_missing",
                "the sum of squared errors is scaled by 0.0005 so that it does not drown the margin loss.",
                wrong=lambda x, r: np.mean(np.sum((x - r) ** 2, axis=(1, 2, 3)))),
        Mistake("summed_over_batch",
                "you summed over the batch as well: sum over each image's pixels, then average over the batch.",
                wrong=lambda x, r: 0.0005 * np.sum((x - r) ** 2)),
        Mistake("not_squared",
                "the errors are squared: (image − reconstruction)².",
                wrong=lambda x, r: 0.0005 * np.mean(np.sum(np.abs(x - r), axis=(1, 2, 3)))),
    ],
    task=("Write `my_reconstruction_loss(images, reconstructions)`: for each image the **sum** of squared pixel "
          "errors, averaged over the batch, times 0.0005. Both inputs `(batch, 28, 28, 1)`; return one number. "
          "Which axes do you reduce, and how?"),
    stub='''import numpy as np

def my_reconstruction_loss(images, reconstructions):
    """images, reconstructions (batch, 28, 28, 1) -> a number."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_reconstruction_loss(images, reconstructions):
    """images, reconstructions (batch, 28, 28, 1) -> a number."""
    per_image = np.sum((images - reconstructions) ** 2, axis=(1, 2, 3))   # (batch,)
    return 0.0005 * float(np.mean(per_image))''',
))


# =========================================================================== chapter 7: training


def _steps_reference(n, batch_size):
    from .train import ShiftedBatches
    return len(ShiftedBatches(np.zeros((n, 1, 1, 1), "float32"), np.zeros((n, 10), "float32"), batch_size,
                              max_shift=0))


check_steps_per_epoch = _register(Exercise(
    id="7.1", slug="steps-per-epoch", title="A shape puzzle: steps per epoch", chapter="07_training_on_a_gpu",
    section="Optimizer, loss and metric", func="my_steps_per_epoch", checker="check_steps_per_epoch",
    signature="my_steps_per_epoch(n_images, batch_size)",
    inputs=[("n_images", "int", ""), ("batch_size", "int", "")],
    outputs=[("steps", "int", "batches in one epoch, the last one possibly smaller")],
    reference_name="len(capslib.train.ShiftedBatches(...))",
    make_cases=lambda: [Case(a, f"n_images={a[0]}, batch_size={a[1]}") for a in
                        [(60000, 128), (4000, 32), (7996, 128), (1000, 1000), (10, 3)]],
    reference=_steps_reference,
    mistakes=[
        Mistake("dropped_last_batch",
                "you dropped the last, smaller batch: 60,000 / 128 = 468.75, so an epoch is 468 full batches "
                "and one of 96 — 469 steps. Round up: -(-n // b) or math.ceil(n / b).",
                wrong=lambda n, b: n // b),
        Mistake("not_an_integer",
                "a number of steps is a whole number: round n / b up (the last batch is smaller).",
                wrong=lambda n, b: n / b),
        Mistake("always_plus_one",
                "n // b + 1 adds an empty batch when b divides n (1000 images in batches of 1000 is one step): "
                "round up instead, -(-n // b).",
                wrong=lambda n, b: n // b + 1),
    ],
    task=("Write `my_steps_per_epoch(n_images, batch_size)`: how many training steps (batches) one epoch takes, the "
          "last batch being smaller when `batch_size` does not divide `n_images`. The paper's 60,000 MNIST images in "
          "batches of 128?"),
    stub='''def my_steps_per_epoch(n_images, batch_size):
    """ints in, int out: batches per epoch, counting a last smaller batch."""
    raise NotImplementedError''',
    solution='''def my_steps_per_epoch(n_images, batch_size):
    """ints in, int out: batches per epoch, counting a last smaller batch."""
    return -(-n_images // batch_size)        # ceil without floats: 60000, 128 -> 469''',
))


@lru_cache(maxsize=1)
def _book_optimizer():
    from .train import TrainConfig, make_optimizer
    return make_optimizer(TrainConfig())


def _lr_reference(step):
    opt = _book_optimizer()
    opt.iterations.assign(step)
    return float(_np(opt.learning_rate))


check_learning_rate = _register(Exercise(
    id="7.2", slug="learning-rate", title="The learning rate after n steps", chapter="07_training_on_a_gpu",
    section="Optimizer, loss and metric", func="my_learning_rate", checker="check_learning_rate",
    signature="my_learning_rate(step)",
    inputs=[("step", "int", "optimizer steps so far")],
    outputs=[("lr", "a number", "Adam's learning rate at that step")],
    reference_name="capslib.train.make_optimizer(TrainConfig())",
    make_cases=lambda: [Case((s,), f"step={s}") for s in (0, 1000, 2000, 4690, 14070, 100000)],
    reference=_lr_reference, rtol=1e-5, atol=1e-12,
    mistakes=[
        Mistake("staircase",
                "your rate drops in steps, once every 2,000 steps. capslib (like the official code's "
                "tf.train.exponential_decay without staircase) decays smoothly: 1e-3 · 0.96^(step / 2000), "
                "a real-valued exponent.",
                wrong=lambda s: 1e-3 * 0.96 ** (s // 2000)),
        Mistake("decays_every_step",
                "×0.96 is applied per 2,000 steps, not per step: the exponent is step / 2000.",
                wrong=lambda s: 1e-3 * 0.96 ** s),
        Mistake("linear_decay",
                "the decay is exponential — multiply by 0.96 per 2,000 steps — not a linear 4% per 2,000 steps.",
                wrong=lambda s: 1e-3 * (1 - 0.04 * s / 2000)),
    ],
    task=("capslib trains with Adam at 1e-3, decayed ×0.96 every 2,000 steps, **smoothly** (as the official code's "
          "`tf.train.exponential_decay`). Write `my_learning_rate(step)`. What is it after 30 epochs of 469 steps?"),
    stub='''def my_learning_rate(step):
    """step (int) -> the learning rate (float) at that step."""
    raise NotImplementedError''',
    solution='''def my_learning_rate(step):
    """step (int) -> the learning rate (float) at that step."""
    return 1e-3 * 0.96 ** (step / 2000)       # a smooth exponential: x0.96 per 2,000 steps

print(f"after 30 epochs: {my_learning_rate(30 * 469):.3g}")''',
))


# =========================================================================== the book's cells


def _fence(n):
    return "`" * n


def exercise_cells(key):
    """The notebook cells for one exercise, in order: [(cell_type, source, metadata)].

    1. markdown: a MyST target ``(exercise-<slug>)=`` (what the exercises page links to) and the
       opening of a gated ``exercise-start`` directive, ``:nonumber:`` (the id is in the title) with
       the task;
    2. code: the stub; 3. code: the check (its output in the book: "not implemented yet");
    4. markdown: ``exercise-end``; 5. markdown: the solution, a ``solution`` directive with
       ``:class: dropdown`` (collapsed until clicked), source hidden in JupyterLab too.
    """
    ex = exercise(key)
    sol = ex.solution.strip("\n")
    explanation = f"\n\n{ex.explanation}" if ex.explanation else ""
    return [
        ("markdown",
         f"(exercise-{ex.slug})=\n"
         f"```{{exercise-start}} {ex.id} · {ex.title}\n:label: {ex.label}\n:nonumber:\n```\n\n{ex.task}", {}),
        ("code", ex.stub, {"tags": ["exercise-stub"]}),
        ("code", f"from capslib.exercises import {ex.checker}\n{ex.checker}({ex.func})", {"tags": ["exercise-check"]}),
        ("markdown", "```{exercise-end}\n```", {}),
        ("markdown",
         f"{_fence(4)}{{solution}} {ex.label}\n:class: dropdown\n:label: sol-{ex.slug}\n\n"
         f"```python\n{sol}\n```{explanation}\n{_fence(4)}",
         {"tags": ["exercise-solution"], "jupyter": {"source_hidden": True}}),
    ]


_CHAPTER_TITLES = {
    "02_convolutions": "Convolutions", "03_primary_capsules": "Primary capsules", "04_predictions": "Predictions û",
    "05_routing": "Dynamic routing", "06_losses_and_decoder": "Margin loss, masking and the decoder",
    "07_training_on_a_gpu": "Training on a GPU",
}


def exercises_page_markdown():
    """Markdown for book/exercises.ipynb: every exercise, linked, grouped by chapter."""
    lines = ["# Exercises", "",
             "Each exercise sits in its chapter, next to the code it practises: a short task, a stub you edit, and "
             "a check under it. Run the chapter (locally or on Colab), fill in the stub, run the check: it tries "
             "your function on several random inputs — batch 1 and odd batches, zero vectors where they matter — "
             "compares with `capslib`, and names the usual mistakes (the softmax over the wrong axis, channels "
             "grouped the wrong way, `W` tiled to the batch, `b` not reset…). Solutions are folded under each "
             "exercise.", "",
             "Write NumPy; `keras.ops` or TensorFlow tensors are accepted too. A check prints its verdict; "
             "`check_...(fn, quiet=True)` returns it instead, as a `capslib.exercises.Verdict`.", ""]
    chapter = None
    for ex in EXERCISES.values():
        if ex.chapter != chapter:
            chapter = ex.chapter
            lines += ["", f"## [{_CHAPTER_TITLES.get(chapter, chapter)}]({chapter}.ipynb)", "",
                      "| | exercise | you write | checked by | recognises |", "|---|---|---|---|---|"]
        names = ", ".join(f"`{m.name}`" for m in ex.mistakes)
        lines.append(f"| {ex.id} | {{ref}}`{ex.title} <exercise-{ex.slug}>` | `{ex.signature}` | "
                     f"`{ex.checker}` | {names} |")
    return "\n".join(lines) + "\n"


def draft_markdown():
    """The draft of every exercise's cells, per chapter (book/_exercise_cells.md)."""
    out = ["# Exercise cells — draft (not built)", "",
           "Generated by `python -m capslib.exercises > book/_exercise_cells.md` from `capslib.exercises.EXERCISES`,",
           "the single source of each exercise's task, stub, check and solution. The chapters hold these cells verbatim",
           "(`capslib.exercises.exercise_cells(\"3.2\")` → `[(cell_type, source, metadata)]`), at the end of the section",
           "named below; `tests/test_exercises.py` fails when a notebook and this module drift apart.", "",
           "Conventions:", "",
           "- The student's function is `my_<name>` so it never shadows a chapter's own names (`squash`, …).",
           "- The exercise is a *gated* `exercise-start` … `exercise-end` pair so the stub and the check sit inside "
           "the exercise box. It is `:nonumber:` (the id, e.g. 3.2, is in the title). sphinx-exercise 1.2.1 does "
           "not register a cross-page label for a gated, unnumbered exercise, so each exercise is preceded by a "
           "MyST target `(exercise-<slug>)=`: the exercises page links to that; the solution refers to the "
           "exercise's own label `ex-<slug>` (same page).",
           "- The solution is a `solution` directive with `:class: dropdown`: sphinx-togglebutton renders it "
           "collapsed until clicked. Its cell metadata `jupyter.source_hidden` folds it in JupyterLab too.",
           "- The check cell's output in the built book is the checker's \"… not implemented yet\" block (the "
           "stub raises `NotImplementedError`). Nothing is written to stderr.",
           ""]
    chapter = None
    for ex in EXERCISES.values():
        if ex.chapter != chapter:
            chapter = ex.chapter
            out += ["", f"## book/{chapter}.ipynb", ""]
        out += [f"### {ex.id} {ex.title}", "",
                f"- insert at the end of section: **{ex.section}**",
                f"- checker: `capslib.exercises.{ex.checker}`; reference: {ex.reference_name}",
                f"- recognised mistakes: {', '.join('`' + m.name + '`' for m in ex.mistakes)}", ""]
        for k, (kind, source, meta) in enumerate(exercise_cells(ex.id), 1):
            meta_text = f" — metadata `{meta}`" if meta else ""
            out += [f"**cell {k}: {kind}**{meta_text}", "", _fence(5) + ("python" if kind == "code" else "markdown"),
                    source, _fence(5), ""]
    out += ["", "## book/exercises.ipynb", "", "One markdown cell:", "", _fence(5) + "markdown",
            exercises_page_markdown().rstrip("\n"), _fence(5), ""]
    return "\n".join(out)


if __name__ == "__main__":   # python -m capslib.exercises > book/_exercise_cells.md
    print(draft_markdown())
