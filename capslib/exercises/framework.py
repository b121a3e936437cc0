"""The checking framework: how a checker calls your function and decides what to say.

One :class:`Exercise` per task. A checker made by :func:`register` runs :func:`judge`, which

1. calls your function on every case — each case of an exercise with array inputs twice, with
   the same shapes and different values (a *twin*), plus cases that leave the defaulted arguments
   out — on fresh copies of the inputs, then calls it once more on the first case;
2. rejects an answer that changes its inputs in place, returns something other than the type
   the task states (:class:`Int`, :class:`Number`, :class:`Array`, :class:`Tuple`, :class:`Dict`,
   :class:`ShapeTuple`), breaks an instruction of the task (``forbid``: a function that must not
   be called, e.g. an einsum; ``numpy_only``; ``keras_ops_only``: no TensorFlow, JAX or torch named
   in the code; ``no_loops``: the lines of your code that run must not grow with the sizes;
   ``track_memory``: no copy of a weight per example), or fails an exercise's extra
   check (e.g. squash's gradient at zero, taken as JAX and PyTorch take it on every backend);
3. compares the values with the exercise's reference under one tolerance policy (:func:`close`);
4. names a catalogued :class:`Mistake` only when that mistake reproduces your output on every
   case; otherwise describes what is wrong (shape in named dims, NaN, largest difference), and
   says "something mixes the examples" only after re-running the failing batch one example at a
   time, with everything else the same, and finding each example right on its own.

Tolerance policy, for every exercise: integers must be exact; a float (a number or an entry of an
array) passes when ``|got - want| <= RTOL·|want| + ATOL·scale``, ``scale`` being the largest
``|want|`` of that output (1 if it is all zeros), compared in float64. A safety epsilon of at most
``SAFETY_EPS`` = 1e-7 inside or outside a square root always passes in value (where it could move
a value by more than the tolerance — a length at zero is ``sqrt(1e-7)``, a squashed capsule of
length 0.01 moves by 5e-4 — the reference is a :class:`Band` from the exact value to the value with
that epsilon); squash's gradient check still refuses one outside the sqrt (sqrt'(0) stays in the chain).
"""

from __future__ import annotations

import gc
import math
import os
import re
import sys
import textwrap
import tracemalloc
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

RTOL = 1e-4
ATOL = 1e-6
SAFETY_EPS = 1e-7
WIDTH = 96
SKIP = object()            # a Mistake's function returns SKIP where the mistake does not apply
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_FRAMEWORKS = ("tensorflow", "keras", "jax", "torch")


# =========================================================================== verdicts


@dataclass(frozen=True)
class Verdict:
    """What a checker found. ``bool(verdict)`` is True only when the answer is correct.

    status: ``"correct"``, ``"not_implemented"`` (the untouched stub), ``"mistake"`` (a recognised
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


# =========================================================================== return types


class Returns:
    """What the task says the function returns; ``normalize`` checks it and makes it comparable."""

    text = "a value"

    def normalize(self, value, what="your output"):
        """(canonical value, problem or None, mistake name or None)."""
        raise NotImplementedError


def _none(what):
    if what != "your output":               # an item inside a tuple or dict: the function did return
        return None, f"{what} is None, not a value", "wrong_type"
    return None, f"{what} is None — did you forget `return`?", "returned_none"


INT_NOTE = "a NumPy integer is fine too, a float is not"          # what Int accepts, in every task's text
INTS_NOTE = "NumPy integers are fine too, floats are not"


def _holds_ints(spec):
    """Does a return type hold ints (so its text must say that NumPy integers pass and floats do not)?"""
    if isinstance(spec, (Int, ShapeTuple)):
        return True
    if isinstance(spec, Tuple):
        return any(_holds_ints(s) for s in spec.items)
    if isinstance(spec, Dict):
        return any(_holds_ints(s) for s in spec.keys.values())
    return False


def _with_int_note(text, specs):
    if any(_holds_ints(s) for s in specs) and "NumPy integer" not in text:
        return f"{text} ({INTS_NOTE})"
    return text


class Int(Returns):
    """A Python ``int`` (a NumPy integer scalar is accepted; a float, even 20.0, is not)."""

    text = f"an `int` ({INT_NOTE})"

    def __init__(self, text=None):
        self.text = text or self.text

    def normalize(self, value, what="your output"):
        if value is None:
            return _none(what)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            return None, f"{what} should be an int, got {typename(value)}", "wrong_type"
        return int(value), None, None


class Number(Returns):
    """One real number: a Python ``float`` or ``int``, a NumPy scalar, or a 0-d array or tensor.
    An array of shape ``(1,)`` is not one number."""

    text = "one number (a Python `float`; a NumPy scalar or a 0-d array or tensor is fine too)"

    def normalize(self, value, what="your output"):
        if value is None:
            return _none(what)
        if isinstance(value, (bool, np.bool_, str, bytes, list, tuple, dict)):
            return None, f"{what} should be one number, got {typename(value)}", "wrong_type"
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value), None, None
        if not hasattr(value, "shape"):
            return None, f"{what} should be one number, got {typename(value)}", "wrong_type"
        shape = tuple(value.shape)
        if shape != ():
            return None, (f"{what} should be one number (shape ()), got an array of shape "
                          f"{fmt_shape(shape)}"), "wrong_type"
        try:
            arr = to_array(value)
        except Exception:  # noqa: BLE001
            return None, f"{what} should be one number, got {typename(value)}", "wrong_type"
        if arr.dtype.kind not in "iuf":
            return None, f"{what} should be a real number, got {typename(value)}", "wrong_type"
        return float(arr), None, None


class Array(Returns):
    """A float array: a NumPy array, or (unless ``numpy_only``) a tensor (TensorFlow, JAX, torch,
    keras). Lists are not arrays. float16/bfloat16 results are refused as too imprecise."""

    def __init__(self, dims=None, numpy_only=False, text=None):
        self.dims = tuple(dims) if dims else None
        self.numpy_only = numpy_only
        shape = f" of shape {fmt_dims(self.dims)}" if self.dims else ""
        self.text = text or (f"a NumPy float array{shape}" if numpy_only
                             else f"a float array (NumPy, or a tensor){shape}")

    def normalize(self, value, what="your output"):
        if value is None:
            return _none(what)
        if isinstance(value, (list, tuple, dict, str, bytes)) or not hasattr(value, "shape"):
            return None, f"{what} should be an array, got {typename(value)}", "wrong_type"
        if self.numpy_only and not isinstance(value, np.ndarray):
            return None, (f"{what} is {typename(value)}; this exercise is NumPy only, so return a "
                          f"NumPy array (and compute with NumPy)"), "not_numpy"
        try:
            arr = to_array(value)
        except Exception:  # noqa: BLE001
            return None, f"{what} should be an array of numbers, got {typename(value)}", "wrong_type"
        if arr.dtype.name in ("float16", "bfloat16") or "bfloat16" in str(getattr(value, "dtype", "")):
            return None, (f"{what} is {arr.dtype.name}: 16-bit floats keep about 3 significant digits, "
                          f"too few to compare. Compute in float32 (or float64)"), "low_precision"
        if arr.dtype.kind != "f":
            return None, f"{what} should be a float array, got dtype {arr.dtype}", "wrong_type"
        return arr.astype(np.float64), None, None


class Tuple(Returns):
    """A Python ``tuple`` of items (a list is not a tuple)."""

    def __init__(self, items, text):
        self.items = list(items)
        self.text = _with_int_note(text, self.items)

    def normalize(self, value, what="your output"):
        if value is None:
            return _none(what)
        if not isinstance(value, tuple):
            return None, f"{what} should be a tuple of {len(self.items)} items, got {typename(value)}", "wrong_type"
        if len(value) != len(self.items):
            return None, f"{what} should be a tuple of {len(self.items)} items, got {len(value)} items", "wrong_type"
        out = []
        for k, (v, spec) in enumerate(zip(value, self.items)):
            canon, problem, name = spec.normalize(v, f"{what}[{k}]")
            if problem:
                return None, problem, name
            out.append(canon)
        return tuple(out), None, None


class ShapeTuple(Returns):
    """A shape: a Python ``tuple`` of ints (its length is compared with the reference's)."""

    text = f"a `tuple` of ints ({INTS_NOTE})"

    def __init__(self, text=None):
        self.text = text or self.text

    def normalize(self, value, what="your output"):
        if value is None:
            return _none(what)
        if not isinstance(value, tuple):
            return None, f"{what} should be a tuple of ints, got {typename(value)}", "wrong_type"
        out = []
        for k, v in enumerate(value):
            if v is None:
                return None, (f"{what}[{k}] is None. Keras writes a size it does not know yet — the batch, in a "
                              f"layer's output shape — as None, but here every size is given: use them (the batch "
                              f"dimension is the `batch` you were passed)"), "unknown_dim"
            canon, problem, name = Int().normalize(v, f"{what}[{k}]")
            if problem:
                return None, problem, name
            out.append(canon)
        return tuple(out), None, None


class Dict(Returns):
    """A ``dict`` with (at least) the given keys, each value of its own type."""

    def __init__(self, keys, text):
        self.keys = dict(keys)
        self.text = _with_int_note(text, self.keys.values())

    def normalize(self, value, what="your output"):
        if value is None:
            return _none(what)
        if not isinstance(value, dict):
            return None, f"{what} should be a dict with keys {list(self.keys)}, got {typename(value)}", "wrong_type"
        missing = [k for k in self.keys if k not in value]
        if missing:
            return None, (f"{what} is missing the key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(k) for k in missing)} (expected keys "
                          f"{', '.join(repr(k) for k in self.keys)})"), "wrong_type"
        out = {}
        for k, spec in self.keys.items():
            canon, problem, name = spec.normalize(value[k], f"{what}[{k!r}]")
            if problem:
                return None, problem, name
            out[k] = canon
        return out, None, None


# =========================================================================== values and comparison


@dataclass(frozen=True)
class Band:
    """A reference that may lie anywhere between ``lo``, the exact value, and ``hi`` (e.g. the value with
    a safety epsilon of SAFETY_EPS), elementwise, plus the usual tolerance. ``allowance`` says in words
    what moves a value from lo towards hi (for the messages: "expected" is always the exact value)."""

    lo: np.ndarray
    hi: np.ndarray
    allowance: str = "what the task allows"

    @property
    def shape(self):
        return self.hi.shape


def to_array(x):
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (int, float, np.number)):
        return np.asarray(x)
    try:
        from keras import ops
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001
        return np.asarray(x)


def canon(x):
    """A reference value as plain Python / NumPy: tuples, dicts, ints, floats, float64 arrays."""
    if isinstance(x, Band):
        return x
    if isinstance(x, dict):
        return {k: canon(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(canon(v) for v in x)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    a = to_array(x)
    if a.ndim == 0:
        return float(a) if a.dtype.kind == "f" else int(a)
    return a.astype(np.float64) if a.dtype.kind in "fiub" else a


def canon_raw(x):
    try:
        return canon(x)
    except Exception:  # noqa: BLE001
        return None


def _tol(want, scale):
    return RTOL * np.abs(want) + ATOL * scale


def close(got, want):
    """The one tolerance policy (module docstring)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and close(got[k], w) for k, w in want.items())
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(close(g, w) for g, w in zip(got, want))
    if isinstance(want, Band):
        if not isinstance(got, np.ndarray) or got.shape != want.shape:
            return False
        scale = float(np.max(np.abs(want.hi))) if want.hi.size else 1.0
        tol = _tol(np.maximum(np.abs(want.lo), np.abs(want.hi)), scale or 1.0)
        lo, hi = np.minimum(want.lo, want.hi), np.maximum(want.lo, want.hi)
        with np.errstate(all="ignore"):
            return bool(np.all(np.isfinite(got)) and np.all(got >= lo - tol) and np.all(got <= hi + tol))
    if isinstance(want, np.ndarray):
        if not isinstance(got, np.ndarray) or got.shape != want.shape:
            return False
        if want.size == 0:
            return True
        scale = float(np.max(np.abs(want))) or 1.0
        with np.errstate(all="ignore"):
            g = got.astype(np.float64)
            return bool(np.all(np.isfinite(g)) and np.all(np.abs(g - want) <= _tol(want, scale)))
    if got is None or isinstance(got, (np.ndarray, tuple, dict, Band)):
        return False
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want or got == want
    if isinstance(want, int):
        return isinstance(got, int) and got == want
    try:
        g, w = float(got), float(want)
    except (TypeError, ValueError):
        return False
    return math.isfinite(g) and abs(g - w) <= _tol(w, abs(w) or 1.0)


# =========================================================================== text helpers


def fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def fmt_dims(dims):
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def typename(x):
    if isinstance(x, np.ndarray):
        return f"a NumPy array of shape {fmt_shape(x.shape)} and dtype {x.dtype}"
    if hasattr(x, "shape") and not isinstance(x, (int, float, np.generic)):
        return f"{_a(type(x).__name__)} of shape {fmt_shape(tuple(x.shape))}"
    if isinstance(x, np.generic):
        return f"a NumPy {type(x).__name__} ({x!r})"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} items"
    if isinstance(x, (bool, int, float, str)):
        return f"{_a(type(x).__name__)} ({x!r})"
    return _a(type(x).__name__)


def _a(noun):
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def wrap(text, indent=""):
    """Wrap each paragraph to WIDTH; lines starting with 4 spaces (code) are kept as they are."""
    out = []
    for para in text.split("\n"):
        if para.startswith("    ") or not para.strip():
            out.append(indent + para)
        else:
            out.append(textwrap.fill(para, WIDTH, initial_indent=indent, subsequent_indent=indent + "  "))
    return "\n".join(out)


def short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# =========================================================================== exercises


@dataclass
class Case:
    """One input the checker tries.

    args: the full arguments, or a zero-argument callable that builds them. npass: how many of
    them to pass (the rest are left to the function's defaults); None passes all. expected: the
    reference value, a zero-argument callable, or None for ``Exercise.reference(*args)``.
    memory: measure this call's peak NumPy memory (exercises with ``track_memory``).
    """

    args: Any
    label: str = ""
    batch: int | None = None
    npass: int | None = None
    expected: Any = None
    memory: bool = False
    twin_of: int | None = None            # set by the framework: the case this one mirrors


@dataclass
class Mistake:
    """A typical mistake, recognised by name.

    wrong: a function with the student's signature that makes this mistake (or a dict
        variant-name → function); it is named when your output equals its output on every case
        (cases where it returns SKIP excepted).
    detect: detect(run) → None/False, or a dict of fields for ``hint`` (custom recognisers).
    error: a regex matched against ``"ExceptionType: message"`` when your function raised, or a
        function ``error(text, run, i)`` → bool for a check that needs the input.
    always: run ``detect`` even when the values are right (e.g. W tiled: right values, wrong memory).
    example: a function that makes this mistake, for the tests (default: ``wrong``).
    """

    name: str
    hint: str
    wrong: Callable | dict | None = None
    detect: Callable | None = None
    error: str | None = None
    always: bool = False
    example: Callable | None = None

    def variants(self):
        if isinstance(self.wrong, dict):
            return dict(self.wrong)
        return {"": self.wrong} if self.wrong is not None else {}

    def examples(self):
        """Every function that makes this mistake (for tests)."""
        out = [self.example] if self.example is not None else []
        return out + [f for f in self.variants().values()]


@dataclass
class Exercise:
    """One exercise: the task, the stub, the checker's cases and reference, the mistake catalogue."""

    id: str                       # "3.2"
    slug: str                     # labels ex-<slug> (exercise), sol-<slug> (solution)
    title: str
    chapter: str                  # "03_primary_capsules"
    section: str                  # the heading (no #) of the section whose end holds the exercise
    func: str                     # the student's function, e.g. "my_squash"
    checker: str                  # "check_squash"
    signature: str                # "my_squash(s, axis=-1)"
    inputs: list                  # [(name, type or shape, named dims)]
    returns: Returns              # what the function returns (checked, and stated in the task)
    returns_dims: str             # what the returned value means, for the "not implemented" block
    reference_name: str
    make_cases: Callable          # make_cases(rng) → [Case]
    reference: Callable | None
    mistakes: list
    task: str                     # markdown
    stub: str                     # code
    solution: str                 # code
    explanation: str = ""         # markdown under the solution
    twins: bool = True            # draw every case twice (same shapes, new values)
    batch_args: tuple = ()        # argument positions with a batch axis 0 (for the per-example check)
    track_memory: bool = False    # measure peak NumPy memory of the cases marked memory=True
    memory_weight: int = 1        # the argument whose per-example copies the memory check looks for
    forbid: tuple = ()            # (regex on a called function's name, mistake name, hint)
    numpy_only: bool = False      # calling TensorFlow/keras/JAX/torch is refused
    keras_ops_only: bool = False  # code that names TensorFlow, JAX or torch itself is refused (keras.ops only)
    no_loops: str = ""            # if set (the hint): a Python loop whose length grows with the sizes is refused
    extra_checks: tuple = ()      # check(run) → None or (mistake name, hint): run on right values
    on_correct: Callable | None = None     # an extra line for a correct answer: on_correct(run) → str
    judge: Callable | None = None          # a custom verdict on wrong values: judge(run) → Verdict | None
    transfer: str = ""            # why it needs more than the cell before it (empty: it does not)
    aliases: tuple = ()           # older checker names that still work
    seed: int = 0
    _prepared: Any = field(default=None, init=False, repr=False)

    @property
    def label(self):
        return f"ex-{self.slug}"

    @property
    def heading(self):
        return f"{self.id} {self.title}"

    @property
    def array_inputs(self):
        return [name for name, kind, _ in self.inputs if kind.startswith("(") or "array" in kind]

    def defaults(self):
        """{name: default text} from the signature."""
        inside = self.signature[self.signature.index("(") + 1:self.signature.rindex(")")]
        out = {}
        for part in re.split(r",\s*(?![^()]*\))", inside):
            if "=" in part:
                name, value = part.split("=", 1)
                out[name.strip()] = value.strip()
        return out

    def contract(self):
        """The sentence every task ends with: the return type, and the rules the checker enforces."""
        parts = [f"**Return** {self.returns.text}."]
        arrays = self.array_inputs
        if arrays:
            names = " and ".join(f"`{n}`" for n in arrays)
            parts.append(f"Leave {names} unchanged (no in-place changes).")
        if self.defaults():
            names = [f"`{n}`" for n in self.defaults()]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            parts.append(f"Keep the defaults of the signature: the check also calls it without {listed}.")
        return " ".join(parts)

    def cases(self):
        """The prepared cases (built once, then cached): [Case], twins after the originals."""
        if self._prepared is None:
            main = list(self.make_cases(np.random.default_rng(self.seed)))
            cases = list(main)
            if self.twins:
                for k, c in enumerate(self.make_cases(np.random.default_rng(self.seed + 1000))):
                    c.twin_of = k
                    cases.append(c)
            self._prepared = {"cases": cases, "args": {}, "expected": {}, "mistakes": {}}
        return self._prepared["cases"]

    def args(self, i):
        store = self._prepared["args"]
        if i not in store:
            a = self.cases()[i].args
            store[i] = tuple(a() if callable(a) else a)
        return store[i]

    def passed(self, i):
        a, n = self.args(i), self.cases()[i].npass
        return a if n is None else a[:n]

    def expected(self, i):
        store = self._prepared["expected"]
        if i not in store:
            self.args(i)
            e = self.cases()[i].expected
            if e is None:
                e = self.reference(*self.args(i))
            elif callable(e):
                e = e()
            store[i] = canon(e)
        return store[i]

    def mistake_output(self, m, variant, i):
        """The canonical output of mistake m's variant on case i (cached), or SKIP / an Exception."""
        self.cases()
        store = self._prepared["mistakes"]
        key = (m.name, variant, i)
        if key not in store:
            res = call(m.variants()[variant], self.passed(i))
            if res.value is SKIP:
                store[key] = SKIP
            elif res.error is not None or res.not_implemented:
                store[key] = res.error or NotImplementedError()
            else:
                store[key] = canon_raw(res.value)
        return store[key]

    def label_of(self, i):
        c = self.cases()[i]
        base = c.label or describe_args(self, self.args(i), c.npass)
        return base + (" — again, new values" if c.twin_of is not None else "")


def describe_args(ex, args, npass=None):
    parts = []
    names = [n for n, _, _ in ex.inputs]
    for k, (name, a) in enumerate(zip(names, args)):
        if npass is not None and k >= npass:
            continue
        if isinstance(a, np.ndarray):
            parts.append(f"{name} {fmt_shape(a.shape)}")
        else:
            parts.append(f"{name}={a!r}")
    if npass is not None and npass < len(args):
        parts.append("defaults for " + ", ".join(names[npass:len(args)]))
    return ", ".join(parts)


# =========================================================================== calling your function


class _Outcome:
    __slots__ = ("value", "error", "peak", "not_implemented", "modified", "frameworks", "called", "lines")

    def __init__(self):
        self.value = None
        self.error = None
        self.peak = 0
        self.not_implemented = False
        self.modified = []
        self.frameworks = set()
        self.called = set()
        self.lines = None                   # lines of your own code executed (when counted)


def _copy(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, list):
        return [_copy(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_copy(v) for v in x)
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return a is b


class _Tracer:
    """A sys.setprofile hook: which functions did the call reach (einsum? a deep-learning framework?)."""

    def __init__(self, names):
        self.patterns = [re.compile(p) for p in names]
        self.hits = set()
        self.frameworks = set()

    def __call__(self, frame, event, arg):
        if event == "call":
            code = frame.f_code
            name, path = code.co_name, code.co_filename
            for lib in _FRAMEWORKS:
                if f"{os.sep}{lib}{os.sep}" in path:
                    self.frameworks.add(lib)
        elif event == "c_call":
            name = getattr(arg, "__name__", "") or ""
            root = (getattr(arg, "__module__", "") or "").split(".")[0]
            if root in _FRAMEWORKS:
                self.frameworks.add(root)
        else:
            return
        for p in self.patterns:
            if p.fullmatch(name):
                self.hits.add(p.pattern)


_BACKEND_LIBS = ("tensorflow", "jax", "jaxlib", "torch")
_MISSING = object()


def _library_of(obj):
    """'tensorflow', 'jax' or 'torch' if obj is (or comes from) one of those modules, else None."""
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
    else:
        try:
            name = getattr(obj, "__module__", None) or type(obj).__module__ or ""
        except Exception:  # noqa: BLE001
            return None
    root = str(name).split(".")[0]
    return ("jax" if root == "jaxlib" else root) if root in _BACKEND_LIBS else None


def _codes(code):
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _codes(c)


def backend_libraries(fn):
    """{library: the name that reaches it} for TensorFlow, JAX and torch named by fn's code: its imports,
    the globals and closure variables it reads, and the helper functions of its own module it calls
    (followed the same way). keras, capslib and NumPy are not listed — they are what a keras.ops answer uses."""
    import dis
    found, seen = {}, set()
    module = getattr(fn, "__module__", None)

    def check(obj, name):
        lib = _library_of(obj)
        if lib:
            found.setdefault(lib, name)
        elif isinstance(obj, types.FunctionType) and obj.__module__ == module:
            visit(obj)

    def visit(f):
        if id(f) in seen or not isinstance(f, types.FunctionType):
            return
        seen.add(id(f))
        glob = f.__globals__
        builtins_ = glob.get("__builtins__", {})
        builtins_ = builtins_ if isinstance(builtins_, dict) else vars(builtins_)
        for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
            try:
                check(cell.cell_contents, name)
            except ValueError:                      # an empty cell
                pass
        for code in _codes(f.__code__):
            for ins in dis.get_instructions(code):
                arg = ins.argval if isinstance(ins.argval, str) else ""
                if ins.opname in ("IMPORT_NAME", "IMPORT_FROM") or ins.opname.startswith(("LOAD_ATTR", "LOAD_METHOD")):
                    if arg.split(".")[0] in _BACKEND_LIBS:
                        found.setdefault("jax" if arg.startswith("jaxlib") else arg.split(".")[0], arg)
                elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                    obj = glob.get(arg, builtins_.get(arg, _MISSING))
                    if obj is not _MISSING:
                        check(obj, arg)

    try:
        visit(fn)
    except Exception:  # noqa: BLE001 — an unusual callable: nothing to say about it
        return {}
    return found


def _is_library(filename):
    return ("site-packages" in filename or "dist-packages" in filename or "/lib/python" in filename
            or os.path.abspath(filename).startswith(PACKAGE_DIR) or filename.startswith("<frozen"))


class _LineCounter:
    """A sys.settrace hook: how many lines of the student's own code (not a library's, not this
    package's) ran — a Python loop over the data makes it grow with the sizes."""

    def __init__(self):
        self.lines = 0
        self._library = {}

    def __call__(self, frame, event, arg):
        code = frame.f_code
        lib = self._library.get(code)
        if lib is None:
            lib = self._library[code] = _is_library(code.co_filename)
        return None if lib else self._local

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines += 1
        return self._local


def call(fn, args, track_memory=False, trace=None, count_lines=False):
    """fn(*args) on copies of args, NumPy warnings silenced (nothing may reach stderr in the book)."""
    passed = _copy(tuple(args))
    pristine = _copy(passed)
    out = _Outcome()
    started = False
    tracer = _Tracer(trace) if trace is not None else None
    counter = _LineCounter() if count_lines else None
    value = None
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
            old_profile, old_trace = sys.getprofile(), sys.gettrace()
            collecting = gc.isenabled()
            try:
                if tracer is not None or counter is not None:
                    gc.disable()                  # a finalizer run by the collector is not the student's call
                if tracer is not None:
                    sys.setprofile(tracer)
                if counter is not None:
                    sys.settrace(counter)
                value = fn(*passed)
            finally:
                if counter is not None:
                    sys.settrace(old_trace)
                if tracer is not None:
                    sys.setprofile(old_profile)
                if (tracer is not None or counter is not None) and collecting:
                    gc.enable()
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
    if tracer is not None:
        out.called, out.frameworks = tracer.hits, tracer.frameworks
    if counter is not None:
        out.lines = counter.lines
    out.modified = [k for k, (a, b) in enumerate(zip(passed, pristine)) if not _same(a, b)]
    return out


# =========================================================================== one checker call


class Run:
    """One checker call: the cases, your outcomes, your normalised outputs."""

    def __init__(self, ex: Exercise, fn):
        self.ex, self.fn = ex, fn
        self.cases = ex.cases()
        self.n = len(self.cases)
        self.outcomes = [None] * self.n
        self.got = [None] * self.n
        self.again = None                    # the repeated first call

    def args(self, i):
        return self.ex.args(i)

    def expected(self, i):
        return self.ex.expected(i)

    def label(self, i):
        return self.ex.label_of(i)

    def call(self, i, fn=None, args=None):
        ex, case = self.ex, self.cases[i]
        trace = tuple(p for p, _, _ in ex.forbid) if (fn is None and (ex.forbid or ex.numpy_only)) else None
        return call(fn or self.fn, self.ex.passed(i) if args is None else args,
                    ex.track_memory and case.memory and fn is None, trace, bool(ex.no_loops) and fn is None)

    def ok(self, i):
        return self.got[i] is not None and close(self.got[i], self.expected(i))


def verdict(ex, status, text, mistake=None, case_label=None):
    body = wrap("✗ Not yet — " + ex.heading + ": " + text)
    if case_label:
        body += "\n" + wrap(f"  (seen on the input {case_label})")
    return Verdict(ex.id, status, body, mistake)


def _error_text(e):
    return f"{type(e).__name__}: {e}"


def _where(e):
    """' — in f, line N `source`' for the deepest frame of your code (not a library, not this package)."""
    import traceback
    try:
        frames = traceback.extract_tb(e.__traceback__)
    except Exception:  # noqa: BLE001
        return ""
    mine = [f for f in frames if "site-packages" not in f.filename and "dist-packages" not in f.filename
            and not os.path.abspath(f.filename).startswith(PACKAGE_DIR) and "/lib/python" not in f.filename]
    if not mine:
        return ""
    f = mine[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" — in {f.name}, line {f.lineno}{code}"


def _expects_block(ex, fn_name):
    rows = [(n, k, d) for n, k, d in ex.inputs] + [("returns", ex.returns.text, ex.returns_dims)]
    w_name = max(len(n) for n, _, _ in rows)
    lines = [f"  {fn_name}({', '.join(n for n, _, _ in ex.inputs)}) takes"]
    for n, kind, dims in ex.inputs:
        lines.append(f"      {n:<{w_name}}  {kind}" + (f"   {dims}" if dims else ""))
    lines.append(f"  and returns {ex.returns.text}" + (f": {ex.returns_dims}" if ex.returns_dims else "") + ".")
    if ex.array_inputs:
        lines.append("  It must leave its input arrays unchanged.")
    return "\n".join(lines)


def _not_implemented(ex, fn_name, run):
    firsts = [i for i in range(run.n) if run.cases[i].twin_of is None]
    labels = [run.label(i) for i in firsts]
    twice = " (each twice: the same shapes, new values)" if ex.twins else ""
    msg = (f"… {ex.heading}: not implemented yet.\n"
           f"{_expects_block(ex, fn_name)}\n"
           f"  Replace `raise NotImplementedError` in {fn_name} with your code and run that cell, then this one.\n"
           f"  The check will try {len(labels)} inputs{twice}:\n" + "\n".join("      " + lab for lab in labels))
    return Verdict(ex.id, "not_implemented", msg)


def _shape_message(got, want, dims, what):
    text = f"{what} has shape {fmt_shape(got.shape)}, expected {fmt_shape(want.shape)}"
    if dims and len(dims) == len(want.shape):
        text += " = " + fmt_dims(dims)
    text += "."
    if dims and len(dims) == len(want.shape) and sorted(got.shape) == sorted(want.shape) \
            and got.shape != want.shape and len(set(want.shape)) == len(want.shape):
        name_of = dict(zip(want.shape, dims))
        text += (" Same sizes, different order: your axes read as " + fmt_dims([name_of[d] for d in got.shape])
                 + " — transpose, or fix the einsum/reshape that made it.")
    elif dims and got.ndim == want.ndim == len(dims):
        bad = [k for k in range(got.ndim) if got.shape[k] != want.shape[k]]
        text += (" Dim" + ("s " if len(bad) > 1 else " ") + ", ".join(f"{k} ({dims[k]})" for k in bad)
                 + (" differ." if len(bad) > 1 else " differs."))
    elif got.ndim != want.ndim:
        text += f" (rank {got.ndim} instead of {want.ndim})"
    return text


def _pairs(run, i):
    """[(name, got, want, dims)] for the outputs of case i."""
    ex, want, got = run.ex, run.expected(i), run.got[i]
    spec = ex.returns
    if isinstance(want, tuple) and isinstance(spec, Tuple):
        return [(f"item {k} of your tuple", g, w, getattr(s, "dims", None))
                for k, (g, w, s) in enumerate(zip(got, want, spec.items))]
    if isinstance(want, dict):
        return [(f"your {k!r}", got.get(k), w, None) for k, w in want.items()]
    return [("your output", got, want, getattr(spec, "dims", None))]


def _value_message(run, i):
    for name, g, w, dims in _pairs(run, i):
        if close(g, w):
            continue
        if isinstance(w, (np.ndarray, Band)):
            if g.shape != w.shape:
                return _shape_message(g, w if isinstance(w, np.ndarray) else w.hi, dims, name)
            w64 = w.lo if isinstance(w, Band) else w          # the exact value
            bad = ~np.isfinite(g)
            if bad.any():
                idx = tuple(int(k) for k in np.argwhere(bad)[0])
                return (f"{name} has NaN or inf at index {idx} ({int(bad.sum())} such entries) where "
                        f"{run.ex.reference_name} gives {w64[idx]:.6g}. A division by zero, or the sqrt of a "
                        f"negative number?")
            if isinstance(w, Band):
                lo, hi = np.minimum(w.lo, w.hi), np.maximum(w.lo, w.hi)
                out = np.maximum(lo - g, g - hi)                # how far outside the allowed range
                idx = tuple(int(k) for k in np.unravel_index(np.argmax(out), out.shape))
                if abs(w.hi[idx] - w.lo[idx]) < 0.1 * out[idx]:       # the allowance does not matter there
                    return (f"wrong values in {name}: the largest difference from {run.ex.reference_name} is "
                            f"{out[idx]:.3g}, at index {idx} (expected {w.lo[idx]:.6g}, got {g[idx]:.6g}).")
                return (f"wrong values in {name}: at index {idx} the exact value is {w.lo[idx]:.6g} and "
                        f"{w.allowance} allows up to {w.hi[idx]:.6g}, but you gave {g[idx]:.6g} — "
                        f"{out[idx]:.3g} outside that range, the largest gap of your output.")
            diff = np.abs(g - w64)
            idx = tuple(int(k) for k in np.unravel_index(np.argmax(diff), diff.shape))
            return (f"wrong values in {name}: the largest difference from {run.ex.reference_name} is "
                    f"{diff[idx]:.3g}, at index {idx} (expected {w64[idx]:.6g}, got {g[idx]:.6g}).")
        if isinstance(w, tuple) and isinstance(g, tuple) and len(g) != len(w):
            return f"{name} has {len(g)} items, expected {len(w)}: expected {w!r}, got {g!r}."
        return f"wrong value for {name}: expected {w!r}, got {g!r}."
    return "wrong values."


def _slice_example(ex, args, n):
    return tuple(a[n:n + 1] if k in ex.batch_args else a for k, a in enumerate(args))


def _examples_right_alone(run, i):
    """True if, run one example at a time (everything else the same), every example of case i is
    right; False if not; None if the exercise has no batch axis to split."""
    ex, case = run.ex, run.cases[i]
    if not ex.batch_args or not case.batch or case.batch < 2 or ex.reference is None:
        return None
    args = run.args(i)
    for n in range(case.batch):
        sliced = _slice_example(ex, args, n)
        passed = sliced if case.npass is None else sliced[:case.npass]
        res = call(run.fn, passed)
        if res.error is not None or res.not_implemented:
            return False
        got, problem, _ = ex.returns.normalize(res.value)
        if problem or not close(got, canon(ex.reference(*sliced))):
            return False
    return True


def _matches(run, m, raw=False):
    """The variant of mistake m that reproduces your output on every case, or None."""
    ex = run.ex
    for variant in m.variants():
        used = differs = 0
        for i in range(run.n):
            mine = ex.mistake_output(m, variant, i)
            if mine is SKIP:
                continue
            if isinstance(mine, BaseException) or mine is None:
                break
            yours = canon_raw(run.outcomes[i].value) if raw else run.got[i]
            if not (close(yours, mine) or close(canon_raw(run.outcomes[i].value), mine)):
                break
            used += 1
            if not close(mine, run.expected(i)):
                differs += 1
        else:
            if used and differs:
                return variant
    return None


def _denan(x):
    """x with NaN and inf replaced by a fixed number (to compare two answers that both hold NaN)."""
    if isinstance(x, dict):
        return {k: _denan(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_denan(v) for v in x)
    if isinstance(x, np.ndarray):
        return np.where(np.isfinite(x), x, 123456.0)
    if isinstance(x, float) and not math.isfinite(x):
        return 123456.0
    return x


def _hint(m, variant=None, fields=None):
    fields = dict(fields or {})
    if variant:
        fields.setdefault("variant", variant)
    try:
        return m.hint.format(**fields)
    except (KeyError, IndexError):
        return m.hint


def judge(ex: Exercise, fn) -> Verdict:
    if not callable(fn):
        return Verdict(ex.id, "error", wrap(
            f"✗ {ex.heading}: {ex.checker} needs your function itself — {ex.checker}({ex.func}) — "
            f"not {typename(fn)}."))
    fn_name = getattr(fn, "__name__", ex.func)
    run = Run(ex, fn)
    n = run.n
    snapshot = _snapshot(fn)                # what a fresh copy of fn needs (a stale-answer check, step 12)

    # 1. call it on every case, then once more on the first; the untouched stub stops here
    for i in range(n):
        run.outcomes[i] = run.call(i)
        if run.outcomes[i].not_implemented:
            return _not_implemented(ex, fn_name, run)
    run.again = run.call(0)

    # 2. exceptions
    errs = [i for i in range(n) if run.outcomes[i].error is not None]
    if errs:
        return _judge_errors(run, errs)

    # 3. inputs changed in place
    for i in range(n):
        if run.outcomes[i].modified:
            names = [ex.inputs[k][0] for k in run.outcomes[i].modified]
            changed = f"{' and '.join('`' + x + '`' for x in names)}"
            if all(isinstance(run.args(i)[k], (list, dict)) for k in run.outcomes[i].modified):
                how = (f"A caller's list must come back as it went in: work on a copy or a new list "
                       f"(`list({names[0]})`, `{names[0]}[::-1]`, `reversed({names[0]})`, `sorted(...)`), not "
                       f"`.reverse()`, `.sort()`, `.pop()`, `.append()`, `del` or an assignment to one of its "
                       f"items.")
            else:
                how = ("A caller's arrays must come back as they went in: compute into a new array (`v = v * keep`, "
                       "not `v *= keep`; `b = b + a`, not `b += a`; no assignment into a slice or a view of an "
                       "input such as `x[...] = 0`).")
            return verdict(ex, "mistake", (
                f"your function changed its input{'s' if len(names) > 1 else ''} {changed} in place. {how}"),
                "input_modified", run.label(i))

    # 4. instructions: forbidden functions, frameworks in a NumPy-only exercise
    for i in range(n):
        o = run.outcomes[i]
        for pattern, name, hint in ex.forbid:
            if pattern in o.called:
                return verdict(ex, "mistake", hint, name, run.label(i))
        if ex.numpy_only and o.frameworks:
            return verdict(ex, "mistake", (
                f"this exercise is NumPy only (the check measures the memory NumPy allocates, which it "
                f"cannot see inside {', '.join(sorted(o.frameworks))}): write it with np.* functions and "
                f"operators."), "not_numpy", run.label(i))

    if ex.no_loops:
        found = _loop_over_the_data(run)
        if found:
            return verdict(ex, "mistake", found + " " + ex.no_loops, "python_loop")
    if ex.keras_ops_only:
        used = backend_libraries(fn)
        if used:
            names = ", ".join(f"{lib} (`{how}`)" for lib, how in sorted(used.items()))
            return verdict(ex, "mistake", (
                f"your function uses {names} directly. The task asks for keras.ops, so that the same code runs "
                f"on every backend Keras runs on — TensorFlow, JAX and PyTorch: ops.sum, ops.square, ops.sqrt, "
                f"ops.where, … instead."), "not_keras_ops")

    # 5. the return type the task states
    for i in range(n):
        norm, problem, name = ex.returns.normalize(run.outcomes[i].value)
        if problem:
            for m in ex.mistakes:
                if m.wrong is not None and (variant := _matches(run, m, raw=True)) is not None:
                    return verdict(ex, "mistake", _hint(m, variant), m.name, run.label(i))
            if name == "returned_none":
                return verdict(ex, "wrong", problem, name, run.label(i))
            tail = "" if name in ("low_precision", "not_numpy") else f" The task asks for {ex.returns.text}."
            return verdict(ex, "mistake", problem + "." + tail, name, run.label(i))
        run.got[i] = norm

    # 6. a custom verdict
    if ex.judge is not None:
        v = ex.judge(run)
        if v is not None:
            return v

    # 7. mistakes that hide behind right values (memory)
    for m in ex.mistakes:
        if m.always and m.detect is not None:
            found = m.detect(run)
            if found:
                return verdict(ex, "mistake", _hint(m, fields=found if isinstance(found, dict) else None), m.name)

    ok = [run.ok(i) for i in range(n)]

    # 8. state kept between calls: the first case again gives another answer
    again, _, _ = ex.returns.normalize(run.again.value) if run.again.error is None else (None, None, None)
    state = not (again is not None and close(_denan(again), _denan(run.got[0])))

    # 9. correct?
    if all(ok) and not state:
        for check in ex.extra_checks:
            found = check(run)
            if found:
                name, text = found
                return verdict(ex, "mistake", text, name)
        firsts = [i for i in range(n) if run.cases[i].twin_of is None]
        labels = "; ".join(run.label(i) for i in firsts)
        twice = ", each twice with new values" if ex.twins else ""
        msg = wrap(f"✓ Correct — {ex.heading}: your {fn_name} agrees with {ex.reference_name} on all "
                   f"{len(firsts)} inputs{twice} ({labels}).")
        extra = ex.on_correct(run) if ex.on_correct else ""
        if extra:
            msg += "\n" + wrap("  " + extra)
        return Verdict(ex.id, "correct", msg)
    if all(ok) and state:
        return verdict(ex, "mistake", (
            "right on every input, but calling it again on the first input gave a different answer: "
            "something survives from one call to the next (a global, a default argument that is a "
            "mutable array, a cache). Each call must start from scratch."), "state_between_calls", run.label(0))

    # 10. right with every argument passed, wrong with the defaults — and right on that same input
    #     when the defaulted arguments are passed explicitly (else the defaults are not the problem)
    defaults_cases = [i for i in range(n) if run.cases[i].npass is not None]
    if defaults_cases and all(ok[i] for i in range(n) if i not in defaults_cases):
        i = next(i for i in defaults_cases if not ok[i])
        if _right_with(run, i, run.call(i, args=run.args(i))):
            return verdict(ex, "mistake", (
                f"right when every argument is passed, wrong when the defaulted ones are left out. The task's "
                f"signature is {ex.signature}: check your default values."), "wrong_default", run.label(i))

    # 11. a named mistake that reproduces your output on every input
    bad = next(i for i in range(n) if not ok[i])
    for m in ex.mistakes:
        found = None
        if m.detect is not None and not m.always:
            found = m.detect(run)
        if not found and m.wrong is not None:
            variant = _matches(run, m)
            if variant is not None:
                found = {"variant": variant} if variant else True
        if found:
            return verdict(ex, "mistake", _hint(m, fields=found if isinstance(found, dict) else None),
                           m.name, run.label(bad))

    # 12. stale answers: the same answer for two inputs of the same shape (a cache keyed on the shape?),
    #     state between calls, or an input that a fresh copy of the function gets right
    for i in range(n):
        k = run.cases[i].twin_of
        if k is not None and not ok[i] and ok[k] and close(run.got[i], run.got[k]) \
                and not close(run.expected(i), run.expected(k)):
            return verdict(ex, "mistake", (
                "for two inputs of the same shape but different values your function returned the same "
                "answer — the first one's. Does it cache results by shape, or keep something from an "
                "earlier call? Compute the answer from the values every time."), "stale_result", run.label(i))
    if state:
        return verdict(ex, "mistake", (
            "calling it again on the first input gave a different answer: something survives from one "
            "call to the next (a global, a mutable default argument). Each call must start from scratch."),
            "state_between_calls", run.label(0))
    fresh = _fresh_copy(fn, snapshot)                 # fn as it was before the check's first call
    if fresh is not None and _right_with(run, bad, run.call(bad, fn=fresh)):
        return verdict(ex, "mistake", (
            "wrong on this input after the inputs before it, yet a fresh copy of your function (its globals, "
            "closure and defaults as they were before the check) gets it right when this input comes first: "
            "something kept from an earlier call — a cache keyed on part of the input (a length, a shape), a "
            "global, a mutable default argument — gives a stale answer. Compute the answer from the values every "
            "time."), "stale_result", run.label(bad))

    # 13. not recognised: shapes, NaN, values — in named dims, with the first input that fails
    text = _value_message(run, bad)
    if _examples_right_alone(run, bad):
        text += (f" Yet each of its {run.cases[bad].batch} examples, passed alone with everything else the same, "
                 f"comes out right: something mixes the examples (a reduction over the batch axis 0?) or "
                 f"carries state from one example to the next.")
    return verdict(ex, "wrong", text, None, run.label(bad))


LOOP_LINES = 5   # this many more lines of your code on one input than on another is a loop over the data
                 # (a branch for a special case adds a line or two; a loop over 3 vs 10 capsules adds 7+)


def _loop_over_the_data(run):
    """A sentence if the lines of the student's code that ran grow with the inputs' sizes, else None."""
    counted = [(run.outcomes[i].lines, i) for i in range(run.n)
               if run.outcomes[i].lines is not None and run.cases[i].twin_of is None]
    if len(counted) < 2:
        return None
    (few, i), (many, k) = min(counted), max(counted)
    if many - few < LOOP_LINES:
        return None
    return (f"your function runs a Python loop over the data: your code ran {many} lines for the input "
            f"{run.label(k)}, but {few} for {run.label(i)}.")


def _right_with(run, i, outcome):
    """Is this outcome (another call on case i's input) the right answer for case i?"""
    if outcome.error is not None or outcome.not_implemented:
        return False
    got, problem, _ = run.ex.returns.normalize(outcome.value)
    return problem is None and close(got, run.expected(i))


_MUTABLE = (dict, list, set, bytearray, np.ndarray)


def _global_names(code):
    import dis
    return {ins.argval for c in _codes(code) for ins in dis.get_instructions(c)
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL") and isinstance(ins.argval, str)}


def _snapshot(fn):
    """Deep copies of the mutable state fn can keep between calls — the containers among the globals
    its code names, its closure's contents, its defaults — taken before the first call; None when fn
    is not a plain function or its state cannot be copied."""
    import copy
    if not isinstance(fn, types.FunctionType):
        return None
    try:
        glob = {name: copy.deepcopy(fn.__globals__[name]) for name in _global_names(fn.__code__)
                if name in fn.__globals__ and isinstance(fn.__globals__[name], _MUTABLE)}
        cells = []
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:
                cells.append(cell)
                continue
            cells.append(types.CellType(copy.deepcopy(value)) if isinstance(value, _MUTABLE) else cell)
        return glob, cells, copy.deepcopy(fn.__defaults__), copy.deepcopy(fn.__kwdefaults__)
    except Exception:  # noqa: BLE001
        return None


def _fresh_copy(fn, snapshot):
    """fn as it was before the check (from its snapshot), as a new function; None if there is none."""
    import copy
    if snapshot is None:
        return None
    glob, cells, defaults, kwdefaults = snapshot
    try:
        namespace = dict(fn.__globals__)
        namespace.update(copy.deepcopy(glob))
        closure = tuple(types.CellType(copy.deepcopy(c.cell_contents)) if _holds_mutable(c) else c for c in cells)
        new = types.FunctionType(fn.__code__, namespace, fn.__name__, copy.deepcopy(defaults), closure or None)
        new.__kwdefaults__ = copy.deepcopy(kwdefaults)
        return new
    except Exception:  # noqa: BLE001
        return None


def _holds_mutable(cell):
    try:
        return isinstance(cell.cell_contents, _MUTABLE)
    except ValueError:
        return False


def _error_matches(m, text, run, i):
    """Does mistake m's ``error`` (a regex, or a function of (text, run, i)) explain this exception?"""
    if m.error is None:
        return False
    if callable(m.error):
        try:
            return bool(m.error(text, run, i))
        except Exception:  # noqa: BLE001
            return False
    return re.search(m.error, text, re.S) is not None


def _raised_by_the_call(e):
    """A TypeError raised while binding the arguments (no frame of the function itself ran)?"""
    if not isinstance(e, TypeError) or e.__traceback__ is None:
        return False
    import traceback
    frames = traceback.extract_tb(e.__traceback__)
    return (bool(frames) and os.path.abspath(frames[-1].filename) == os.path.abspath(__file__)
            and re.search(r"positional argument|unexpected keyword argument|required (positional|keyword)", str(e))
            is not None)


def _judge_errors(run, errs):
    ex, n = run.ex, run.n
    i = errs[0]
    text = _error_text(run.outcomes[i].error)
    defaults_cases = [k for k in errs if run.cases[k].npass is not None]
    if defaults_cases and len(defaults_cases) == len(errs):
        k = defaults_cases[0]
        missing = isinstance(run.outcomes[k].error, TypeError) and "argument" in str(run.outcomes[k].error)
        return verdict(ex, "mistake", (
            f"your function works when every argument is passed, but raised {short(_error_text(run.outcomes[k].error))} "
            f"when the defaulted ones were left out. The task's signature is {ex.signature}: "
            + ("give those arguments their defaults." if missing else "check your default values.")),
            "default_missing" if missing else "wrong_default", run.label(k))
    if _raised_by_the_call(run.outcomes[i].error):
        return verdict(ex, "mistake", (
            f"your function cannot be called with the task's arguments — {short(text)}. The task's signature is "
            f"{ex.signature}: give your function exactly these parameters, in this order."),
            "signature_mismatch", run.label(i))
    for m in ex.mistakes:
        if _error_matches(m, text, run, i):
            return verdict(ex, "mistake", _hint(m) + f"\n  (your function raised {short(text)})", m.name,
                           run.label(i))
    case = run.cases[i]
    if ex.batch_args and case.batch and case.batch > 1 and ex.reference is not None:
        sliced = _slice_example(ex, run.args(i), 0)
        alone = call(run.fn, sliced if case.npass is None else sliced[:case.npass])
        if alone.error is None and not alone.not_implemented:
            norm, problem, _ = ex.returns.normalize(alone.value)
            if problem is None and close(norm, canon(ex.reference(*sliced))):
                return verdict(ex, "mistake",
                               f"your function works on one example but raises {short(text)} for batch "
                               f"{case.batch} (the same input otherwise). Is a batch size of 1 written into a "
                               f"reshape or a zeros(...)? Use -1 or x.shape[0] for the batch axis.",
                               "batch_size_hard_coded", run.label(i))
    return verdict(ex, "error", f"your function raised {short(text, 400)}{_where(run.outcomes[i].error)}",
                   None, run.label(i))


# =========================================================================== the registry


EXERCISES: dict[str, Exercise] = {}


def register(ex: Exercise):
    """Add ex to EXERCISES and return its checker, ``check(fn, quiet=False)``."""
    if ex.id in EXERCISES:
        raise ValueError(f"duplicate exercise id {ex.id}")
    EXERCISES[ex.id] = ex

    def check(fn, quiet=False):
        v = judge(ex, fn)
        if quiet:
            return v
        print(v.message)
        return None

    check.__name__ = check.__qualname__ = ex.checker
    check.__doc__ = (f"Exercise {ex.id} {ex.title}: check your ``{ex.signature}`` against {ex.reference_name}.\n\n"
                     f"Prints a verdict and returns None; ``quiet=True`` returns the :class:`Verdict` and prints "
                     f"nothing. Recognised mistakes: {', '.join(m.name for m in ex.mistakes)}.")
    return check


def exercise(key: str) -> Exercise:
    """An exercise by id (``"3.2"``), slug, label or checker name (old names included)."""
    for ex in EXERCISES.values():
        if key in (ex.id, ex.slug, ex.checker, ex.label) or key in ex.aliases:
            return ex
    raise KeyError(f"no exercise {key!r}; known: {', '.join(EXERCISES)}")
