"""Chapter 3, primary capsules: the official code's capsule order, the port's reshape bug, a squash
that is safe in value and gradient, and the number of capsules for other image sizes."""

from __future__ import annotations

import re

import numpy as np

from ._helpers import squash64, squash_eps, squash_grad64, value_and_grad
from .framework import SAFETY_EPS, Array, Band, Case, Exercise, Int, Mistake, Tuple, canon, close, register, typename

# =========================================================================== 3.1 the official code's order


def _type_major_reference(x):
    """The official code's steps, channels first: (batch, 256, h, w) → (batch, 32, 8, h, w) →
    transpose (0, 1, 3, 4, 2) → (batch, 32·h·w, 8)."""
    b, h, w, _ = x.shape
    nchw = np.transpose(x, (0, 3, 1, 2))                    # (batch, 256, h, w)
    caps = nchw.reshape(b, 32, 8, h, w)                     # channel t·8 + d
    caps = np.transpose(caps, (0, 1, 3, 4, 2))              # (batch, 32, h, w, 8)
    return caps.reshape(b, -1, 8)


def _feature_cases(rng):
    sizes = [(1, 6, 6), (3, 6, 6), (2, 4, 7), (4, 5, 3)]
    return [Case((rng.uniform(-1, 1, (b, h, w, 256)).astype("float32"),), batch=b) for b, h, w in sizes]


def _regroup(x, channels, order):
    """x (b, h, w, 256) read as channels (32, 8) or (8, 32), capsules ordered by `order`."""
    b, h, w, _ = x.shape
    if channels == "32x8":
        c = x.reshape(b, h, w, 32, 8)                        # [b, r, c, t, d]
    else:
        c = x.reshape(b, h, w, 8, 32).transpose(0, 1, 2, 4, 3)
    if order == "type":
        c = c.transpose(0, 3, 1, 2, 4)                       # [b, t, r, c, d]
    elif order == "type_cols_first":
        c = c.transpose(0, 3, 2, 1, 4)                       # [b, t, c, r, d]
    return c.reshape(b, -1, 8)


def _port_transpose(x):
    b, h, w, _ = x.shape
    return x.reshape(b, h, w, 8, 32).transpose(0, 4, 3, 1, 2).reshape(b, -1, 8)


check_to_capsules = register(Exercise(
    id="3.1", slug="capsules-reshape", title="Capsules in the official code's order", chapter="03_primary_capsules",
    section="Which channels make a capsule", func="my_to_capsules", checker="check_to_capsules",
    signature="my_to_capsules(x)",
    inputs=[("x", "(batch, height, width, 256)", "the primary conv's output, channels last")],
    returns=Array(("batch", "in_caps", "in_dim")), returns_dims="(batch, 32·height·width, 8), not squashed",
    reference_name="the official code's regrouping (channels first → (batch, 32, 8, h, w) → transpose (0, 1, 3, 4, 2))",
    make_cases=_feature_cases, reference=_type_major_reference, batch_args=(0,),
    mistakes=[
        Mistake("position_major_order",
                "that is capslib's order, position first: i = (row·width + col)·32 + t. The official code "
                "numbers the capsules type first, i = t·(height·width) + row·width + col: move the 32 types in "
                "front of the positions before you flatten them.",
                wrong=lambda x: _regroup(x, "32x8", "position")),
        Mistake("grouped_8_32",
                "your capsules mix the dims of different types: you read channel d·32 + t as dim d of type t. "
                "Like capslib, the official code reads channel t·8 + d as dim d of type t (8 neighbouring "
                "channels make one capsule); only the order of the capsules differs.",
                wrong={"type-major": lambda x: _regroup(x, "8x32", "type"),
                       "position-major": lambda x: _regroup(x, "8x32", "position")}),
        Mistake("one_channel_at_8_positions",
                "each of your capsules holds one channel at 8 neighbouring positions — the TF2 port's "
                "transpose (its reshape to (…, 8, 32) then transpose (0, 4, 3, 1, 2) leaves the 6×6 positions "
                "last, so the final reshape cuts runs of 8 positions). A capsule is 8 channels at one position.",
                wrong=_port_transpose),
        Mistake("rows_cols_swapped",
                "within each type your capsules run over the columns first: i = t·(h·w) + col·h + row. Rows are "
                "the slower index, as in a (…, height, width) array: t·(h·w) + row·w + col.",
                wrong=lambda x: _regroup(x, "32x8", "type_cols_first")),
        Mistake("not_flattened",
                "you made the capsules but did not flatten (type, row, col) into one axis: return "
                "(batch, 32·height·width, 8).",
                wrong=lambda x: x.reshape(x.shape[0], x.shape[1], x.shape[2], 32, 8).transpose(0, 3, 1, 2, 4)),
        Mistake("batch_merged",
                "your output has no batch axis: reshape(-1, 8) puts every example's capsules in one list. Keep "
                "the batch: reshape(x.shape[0], -1, 8).",
                wrong=lambda x: _type_major_reference(x).reshape(-1, 8)),
    ],
    task=("capslib numbers its capsules position first, $i = (\\text{row}\\cdot 6 + \\text{col})\\cdot 32 + t$. "
          "The paper's official code works channels first and numbers them **type first**: it reshapes its "
          "`(batch, 256, 6, 6)` conv output to `(batch, 32, 8, 6, 6)` (so channel $t\\cdot 8 + d$ is still dim "
          "$d$ of type $t$), moves the 8 dims last and flattens, so that "
          "$i = t\\cdot 36 + \\text{row}\\cdot 6 + \\text{col}$. Write `my_to_capsules(x)` that takes the "
          "channels-last `x` of shape `(batch, height, width, 256)` — any height and width, not only 6×6 — and "
          "returns the official code's capsules, `(batch, 32·height·width, 8)`, in that order "
          "($i = t\\cdot \\text{height}\\cdot\\text{width} + \\text{row}\\cdot\\text{width} + \\text{col}$), "
          "not squashed. Check your idea on `pos_label` above: which channels and position should capsule 1 hold?"),
    stub='''import numpy as np

def my_to_capsules(x):
    """x (batch, h, w, 256) -> (batch, 32*h*w, 8), capsule i = t*h*w + row*w + col, dim d = channel t*8 + d."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_to_capsules(x):
    """x (batch, h, w, 256) -> (batch, 32*h*w, 8), capsule i = t*h*w + row*w + col, dim d = channel t*8 + d."""
    batch, h, w, _ = x.shape
    caps = x.reshape(batch, h, w, 32, 8)          # [b, row, col, type, dim]: channel t*8 + d
    caps = caps.transpose(0, 3, 1, 2, 4)          # [b, type, row, col, dim]: the type becomes the slowest
    return caps.reshape(batch, 32 * h * w, 8)     # flatten (type, row, col) in that order''',
    explanation=("A reshape reads numbers in memory order, so the order of the flattened axes is the order of the "
                 "capsules. Moving the type axis in front of (row, col) makes it the slowest index: capsule 1 is "
                 "type 0 at (0, 1), capsule 36 is type 1 at (0, 0). A checkpoint of the official code only works "
                 "with its order — W's first axis is indexed by it."),
    transfer="a different layout (the official code's type-major order) and any height and width",
    seed=31,
))


# =========================================================================== 3.2 find the bug: the port's capsules


def _port_capsules(x):
    caps = x.reshape(-1, 6, 6, 8, 32)
    caps = caps.transpose(0, 4, 3, 1, 2)
    return caps.reshape(-1, 1152, 8)


def _port_fixed_reference(x):
    """Defined index by index: capsule t·36 + row·6 + col, dim d = x[row, col, channel d·32 + t]."""
    b = x.shape[0]
    out = np.empty((b, 1152, 8), x.dtype)
    for t in range(32):
        for d in range(8):
            out[:, t * 36:(t + 1) * 36, d] = x[:, :, :, d * 32 + t].reshape(b, 36)
    return out


def _port_cases(rng):
    return [Case((rng.uniform(-1, 1, (b, 6, 6, 256)).astype("float32"),), batch=b) for b in (1, 3, 5)]


check_port_capsules = register(Exercise(
    id="3.2", slug="port-capsules", title="Find the bug: the TF2 port's primary capsules",
    chapter="03_primary_capsules", section="Another grouping: (8, 32)", func="my_port_capsules_fixed",
    checker="check_port_capsules", signature="my_port_capsules_fixed(x)",
    inputs=[("x", "(batch, 6, 6, 256)", "the primary conv's output")],
    returns=Array(("batch", "in_caps", "in_dim")),
    returns_dims="(batch, 1152, 8): capsule t·36 + row·6 + col holds channels d·32 + t at (row, col)",
    reference_name="the port's intended capsules, built index by index",
    make_cases=_port_cases, reference=_port_fixed_reference, batch_args=(0,),
    mistakes=[
        Mistake("port_unchanged",
                "that is still the port's output: its capsule 0 is channel 0 at the positions (0, 0), (0, 1), …, "
                "(0, 5), (1, 0), (1, 1) — one channel at 8 places, not 8 channels at one place. After "
                "transpose (0, 4, 3, 1, 2) the axes are (batch, type, dim, row, col): the dims must come last.",
                wrong=_port_capsules),
        Mistake("reading_changed",
                "your capsules are 8 channels at one position, but you changed how the channels are read: the "
                "port reads channel d·32 + t as dim d of type t (its reshape to (…, 8, 32)). The task keeps that "
                "reading — only the transpose is wrong.",
                wrong={"type-major": lambda x: _regroup(x, "32x8", "type"),
                       "capslib's reshape": lambda x: x.reshape(-1, 1152, 8)}),
        Mistake("order_changed",
                "right capsules, wrong order: you numbered them position first. The port numbers them type "
                "first, i = t·36 + row·6 + col (its types axis comes right after the batch): keep it.",
                wrong=lambda x: _regroup(x, "8x32", "position")),
        Mistake("rows_cols_swapped",
                "within each type your capsules run over the columns first; the port's order is "
                "t·36 + row·6 + col (row before col, as in its (…, 6 rows, 6 cols) axes).",
                wrong=lambda x: _regroup(x, "8x32", "type_cols_first")),
    ],
    task=("The TF2 port the book answers built its primary capsules like `port_primary_capsules` below (rewritten "
          "in NumPy). Its text says each capsule is the 8 values that 8 channels take at one position. First "
          "predict what its capsule 0 holds, then look: `port_primary_capsules(pos_label)[0, 0]` with the labelled "
          "`pos_label` from the first section (value = position·1000 + channel). Then write "
          "`my_port_capsules_fixed(x)`, the fix: keep the port's reading of the channels (channel $d\\cdot 32 + t$ "
          "is dim $d$ of type $t$, its reshape to `(…, 8, 32)`) and its type-first order "
          "($i = t\\cdot 36 + \\text{row}\\cdot 6 + \\text{col}$), and make every capsule 8 channels at one "
          "position."),
    stub='''import numpy as np

def port_primary_capsules(x):
    """The port's primary capsules, rewritten in NumPy: x (batch, 6, 6, 256) -> (batch, 1152, 8)."""
    caps = x.reshape(-1, 6, 6, 8, 32)        # channel d*32 + t read as dim d of type t
    caps = caps.transpose(0, 4, 3, 1, 2)     # -> (batch, 32 types, 8 dims, 6 rows, 6 cols)
    return caps.reshape(-1, 1152, 8)         # meant: one capsule per (type, row, col)

def my_port_capsules_fixed(x):
    """x (batch, 6, 6, 256) -> (batch, 1152, 8): 8 channels at one position, capsule t*36 + row*6 + col."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_port_capsules_fixed(x):
    """x (batch, 6, 6, 256) -> (batch, 1152, 8): 8 channels at one position, capsule t*36 + row*6 + col."""
    caps = x.reshape(-1, 6, 6, 8, 32)        # [b, row, col, dim, type]: the port's reading, kept
    caps = caps.transpose(0, 4, 1, 2, 3)     # [b, type, row, col, dim]: the dims last, not the positions
    return caps.reshape(-1, 1152, 8)''',
    explanation=("After the port's transpose the axes are (batch, type, dim, row, col), so the final reshape cuts "
                 "the 36 positions of one (type, dim) into runs of 8: capsule 0 is channel 0 at (0, 0)–(0, 5), "
                 "(1, 0), (1, 1). Nothing fails — the shape is right — but a \"capsule\" is then a strip of one "
                 "feature map, not a vector of 8 features at one place. The fix only moves the dims axis last: "
                 "transpose (0, 4, 1, 2, 3)."),
    transfer="find the bug: the student must read the port's transpose and write the fix",
    seed=32,
))


# =========================================================================== 3.3 squash, safe in value and gradient


def _squash_cases(rng):
    def capsules(shape, scale=0.5):
        return (scale * rng.normal(size=shape)).astype("float32")

    def set_length(s, index, length, axis=-1):
        v = s[index]
        s[index] = (v / np.linalg.norm(v) * length).astype("float32")

    s2 = capsules((3, 1152, 8))
    s2[0, :5] = 0.0
    s2[2, 100] = 0.0
    for k, length in enumerate((1e-4, 1e-2, 0.05, 0.2, 0.3)):
        set_length(s2, (1, 7 + k), length)
    port = capsules((2, 16, 10))
    port[1, :, 4] = 0.0                                       # a zero capsule: a column in this layout
    port[0, :, 2] *= 0.05                                     # a short one
    short = capsules((2, 10, 16))                             # only short capsules: the output's largest number
    lengths = np.geomspace(1e-3, 0.05, 20).reshape(2, 10, 1)  # is small, so the tolerance is tight on each one
    short = (short / np.linalg.norm(short, axis=-1, keepdims=True) * lengths).astype("float32")
    return [
        Case((capsules((1, 1152, 8)), -1), batch=1),
        Case((s2, -1), "s (3, 1152, 8) with 6 zero capsules and 5 short ones (lengths 1e-4 to 0.3)", batch=3),
        Case((capsules((7, 10, 16), 0.2), -1), batch=7),
        Case((capsules((3, 10, 16), 30.0), -1), "s (3, 10, 16), long vectors", batch=3),
        Case((port, 1), "s (2, 16, 10) with axis=1 (capsules as columns), a zero and a short one", batch=2),
        Case((capsules((2, 4, 8, 5)), 2), "s (2, 4, 8, 5) with axis=2", batch=2),
        Case((short, -1), "s (2, 10, 16), every capsule short (lengths 1e-3 to 0.05)", batch=2),
        Case((capsules((2, 10, 16)), -1), "s (2, 10, 16) (axis left to its default)", batch=2, npass=1),
    ]


def _squash_reference(s, axis=-1):
    """Eq. 1 exactly, and up to a safety epsilon of SAFETY_EPS inside the sqrt (the one tolerance policy)."""
    return Band(squash64(s, axis), squash64(s, axis, eps=SAFETY_EPS),
                "a safety epsilon of at most " + f"{SAFETY_EPS:.0e}".replace("e-0", "e-") + " inside the sqrt")


def _nan_at_zero(run):
    for i in range(run.n):
        s, axis = run.args(i)
        got = run.got[i]
        if not isinstance(got, np.ndarray) or got.shape != s.shape:
            continue
        bad = ~np.isfinite(got)
        if bad.any():
            zero = np.broadcast_to(np.all(s == 0, axis=axis, keepdims=True), s.shape)
            if np.all(~bad | zero):
                return {"where": run.label(i)}
    return None


def _norm_lost_its_axis(text, run, i):
    """A broadcasting error between s and s's shape without the capsule axis (a norm without keepdims)."""
    s, axis = run.args(i)
    shapes = [tuple(int(d) for d in re.findall(r"\d+", m)) for m in re.findall(r"[\[(]([\d, ]+)[\])]", text)]
    without = s.shape[:axis % s.ndim] + s.shape[axis % s.ndim + 1:]
    return tuple(s.shape) in shapes and tuple(without) in shapes


def _eps_variants():
    out = {}
    for eps in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        out[f"eps={eps:g} inside the sqrt"] = (lambda e: lambda s, axis=-1: squash_eps(s, axis, e))(eps)
    for eps in (1e-4, 1e-3, 1e-2, 1e-1):
        out[f"eps={eps:g} added to |s|"] = (lambda e: lambda s, axis=-1: (lambda n2: n2 / (1 + n2) * s / (np.sqrt(n2) + e))(
            np.sum(s * s, axis=axis, keepdims=True)))(eps)
    return out


def _squash_naive(s, axis=-1):
    n2 = np.sum(s * s, axis=axis, keepdims=True)
    return n2 / (1 + n2) * s / np.sqrt(n2)


def _gradient_probe():
    rng = np.random.default_rng(303)
    s = (0.5 * rng.normal(size=(2, 6, 8))).astype("float32")
    special = {(0, 0): 0.0, (1, 3): 0.0, (0, 1): 1e-25, (1, 2): 1e-3, (0, 4): 1e-2}
    for (b, i), length in special.items():
        s[b, i] = 0.0 if length == 0 else s[b, i] / np.linalg.norm(s[b, i]) * length
    w = rng.normal(size=s.shape).astype("float32")
    return s, w, special


def _squash_gradient(run):
    """Squash must be safe for training: finite gradient at s = 0 and near it, right elsewhere."""
    s, w, special = _gradient_probe()
    try:
        y, g, raw = value_and_grad(run.fn, s, w, ieee=True)
    except Exception as e:  # noqa: BLE001
        return ("fails_on_tensors", (
            f"right on NumPy arrays, but on a tensor your function raised {type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}. The check differentiates your squash, as training would: write it "
            f"with keras.ops (ops.sum, ops.square, ops.sqrt), like squash_naive above."))
    if g is None:
        import keras
        backend = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}.get(keras.backend.backend(),
                                                                                   keras.backend.backend())
        if isinstance(raw, np.ndarray) or np.isscalar(raw):
            what = (f"returns {typename(raw)}, so no gradient can flow through it (np.* functions leave the "
                    f"autodiff graph)")
        else:
            what = (f"returns {typename(raw)}, not a tensor of {backend}, the backend Keras runs on, so {backend} "
                    f"cannot differentiate it")
        return ("not_differentiable", (
            f"right values, but for a {backend} tensor input your function {what}. The exercise asks for "
            f"keras.ops, because training differentiates squash on whatever backend it runs: use ops.sum, "
            f"ops.square, ops.sqrt."))
    if not close(canon(y), _squash_reference(s)):
        return ("wrong_on_tensors", "right on NumPy arrays but not on a tensor of the same values: use keras.ops "
                                    "throughout (mixing np.* and tensors converts and reorders things).")
    bad = ~np.isfinite(g).all(axis=-1)
    if bad.any():
        where = [f"{'s = 0' if special.get(k, 1) == 0 else f'|s| = {special[k]:g}'}"
                 for k in map(tuple, np.argwhere(bad)) if k in special]
        where = ", ".join(sorted(set(where))) or "ordinary capsules"
        return ("nan_gradient_at_zero", (
            f"the values are right — 0 at s = 0 — but the gradient is NaN or inf at {where}: the exact failure "
            f"the chapter warns about. d sqrt(x)/dx is infinite at 0, and the chain rule multiplies that by 0 to "
            f"give NaN. ops.norm, a where(|s| > 0, …, 0) (autodiff still differentiates the branch that was not "
            f"taken), an epsilon outside the sqrt or ops.maximum(norm, eps) do not stop it: the sqrt still sees "
            f"0. (TensorFlow's sqrt gradient happens to turn that 0·∞ into 0; JAX and PyTorch give NaN, and so "
            f"does this check, on every backend.) Put the epsilon inside the sqrt: "
            f"ops.sqrt(ops.sum(ops.square(s), axis, keepdims=True) + 1e-9)."))
    g_ref = squash_grad64(s, w)
    plain = np.ones(s.shape[:2], bool)
    for k in special:
        plain[k] = False
    if not close(np.asarray(g, np.float64)[plain], g_ref[plain]):
        return ("wrong_gradient", "right values, but the gradient on ordinary capsules differs from Eq. 1's. Does "
                                  "an np.* function hide inside (NumPy cuts the autodiff graph: what it computes "
                                  "counts as a constant), or a stop_gradient or a rounding step? Use keras.ops "
                                  "throughout.")
    near = [k for k, length in special.items() if length > 0]
    g_near = np.asarray(g, np.float64)[tuple(np.array(near).T)]
    w_near = np.asarray(w, np.float64)[tuple(np.array(near).T)]
    if np.any(np.linalg.norm(g_near, axis=-1) > np.linalg.norm(w_near, axis=-1)):
        return ("wrong_gradient", "right values, but near s = 0, where squash is flat, your gradient is larger than "
                                  "squash's Jacobian allows (its norm is at most 1): is an epsilon too small to keep "
                                  "the division stable?")
    return None


check_squash = register(Exercise(
    id="3.3", slug="squash-safe", title="Squash, safe in value and gradient", chapter="03_primary_capsules",
    section="Squash, derived", func="my_squash", checker="check_squash", signature="my_squash(s, axis=-1)",
    inputs=[("s", "(batch, …) array or tensor", "capsules along `axis`"),
            ("axis", "int", "the axis that holds each capsule's numbers")],
    returns=Array(text="a float array (NumPy, or a tensor) of the same shape as `s`"),
    returns_dims="v, each capsule squashed to length |s|²/(1+|s|²)",
    reference_name="Eq. 1 in float64 (gradient: its closed form)",
    make_cases=_squash_cases, reference=_squash_reference, batch_args=(0,), keras_ops_only=True,
    extra_checks=(_squash_gradient,),
    mistakes=[
        Mistake("nan_at_zero",
                "NaN at a zero capsule ({where}): |s| = 0 makes s/|s| a 0/0. Add a small epsilon inside the sqrt "
                "— ops.sqrt(ops.sum(ops.square(s), axis=axis, keepdims=True) + 1e-9) — so a zero capsule squashes "
                "to 0 and its gradient stays finite.",
                detect=_nan_at_zero, example=_squash_naive),
        Mistake("axis_ignored",
                "right for capsules on the last axis, wrong when `axis` is another one: your function ignores its "
                "`axis` argument. Sum the squares over `axis` (with keepdims=True).",
                wrong=lambda s, axis=-1: squash_eps(s, -1)),
        Mistake("norm_over_wrong_axis",
                "your norm runs over the wrong axis ({variant}). A capsule is the vector along `axis` — 8 numbers "
                "for a primary capsule, 16 for a digit capsule.",
                wrong={"axis 1": lambda s, axis=-1: squash_eps(s, 1),
                       "axis 0, across the batch": lambda s, axis=-1: squash_eps(s, 0),
                       "all axes at once": lambda s, axis=-1: squash_eps(s, None)}),
        Mistake("unit_vector",
                "every output has length 1: you divided by |s| but forgot the gain |s|²/(1 + |s|²), which keeps "
                "short vectors short (a capsule's length is a probability).",
                wrong=lambda s, axis=-1: s / np.sqrt(np.sum(s * s, axis=axis, keepdims=True) + 1e-12)),
        Mistake("gain_without_unit",
                "you multiplied s by the gain |s|²/(1 + |s|²) but did not divide by |s|: your lengths come out "
                "|s|³/(1 + |s|²) and grow without bound. v = gain · s / |s|.",
                wrong=lambda s, axis=-1: (lambda n2: n2 / (1 + n2) * s)(np.sum(s * s, axis=axis, keepdims=True))),
        Mistake("gain_not_squared",
                "your gain is |s|/(1 + |s|); Eq. 1 uses the squared norm: |s|²/(1 + |s|²).",
                wrong=lambda s, axis=-1: (lambda n: n / (1 + n) * s / (n + 1e-12))(
                    np.sqrt(np.sum(s * s, axis=axis, keepdims=True)))),
        Mistake("epsilon_too_big",
                "right idea, but your epsilon ({variant}) is big enough to change short capsules (the check has "
                "capsules of length 1e-3 to 0.05, and 1e-4). The check accepts at most 1e-7, inside the sqrt: it "
                "only has to matter when |s| is 0.",
                wrong=_eps_variants()),
        Mistake("keepdims_missing",
                "your norm lost the capsule axis, so it cannot divide s. Keep the summed axis: "
                "ops.sum(ops.square(s), axis=axis, keepdims=True) has size 1 there and broadcasts.",
                error=_norm_lost_its_axis,
                example=lambda s, axis=-1: (lambda n2: n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9))(
                    np.sum(s * s, axis=axis))),
    ],
    task=("Write `my_squash(s, axis=-1)`, Eq. 1 over the given `axis`: "
          "$v = \\frac{|s|^2}{1+|s|^2}\\frac{s}{|s|}$, with **keras.ops** only (like `squash_naive` above; the "
          "check refuses code that calls TensorFlow, JAX or PyTorch itself) so that it works on tensors of every "
          "backend and can be differentiated. It must work for primary capsules `(batch, 1152, 8)`, digit "
          "capsules `(batch, 10, 16)`, and the TF2 port's layout `(batch, 16, 10)` with `axis=1` (capsules as "
          "columns), and be safe where `squash_naive` is not: a zero capsule must give 0, **and the gradient must "
          "be finite at $s = 0$ on every backend** (the check differentiates your function there and next to it, "
          "counting 0·∞ as NaN, as JAX and PyTorch do — TensorFlow alone quietly makes it 0). Short capsules "
          "(lengths 1e-3 to 0.05) keep their values: the check compares with Eq. 1 to the book's tolerance — 1e-4 "
          "relative, plus 1e-6 of the output's largest number — and allows a safety epsilon of at most 1e-7 "
          "inside the square root (it changes a capsule of length 0.01 by 0.05 %), no larger."),
    stub='''from keras import ops

def my_squash(s, axis=-1):
    """s: capsules along `axis` -> v, same shape. keras.ops only; finite value *and gradient* at s = 0."""
    raise NotImplementedError''',
    solution='''from keras import ops

def my_squash(s, axis=-1):
    """s: capsules along `axis` -> v, same shape. keras.ops only; finite value *and gradient* at s = 0."""
    n2 = ops.sum(ops.square(s), axis=axis, keepdims=True)   # |s|², size 1 along `axis`: broadcasts
    norm = ops.sqrt(n2 + 1e-9)                              # epsilon *inside* the sqrt: never sqrt(0)
    return n2 / (1.0 + n2) * s / norm''',
    explanation=("With the epsilon inside the square root, 0/0 becomes 0/√ε = 0, and the derivative of the sqrt, "
                 "$1/(2\\sqrt{|s|^2 + ε})$, stays finite too, on every backend. `where(norm > 0, …, 0)` fixes the "
                 "value but not the gradient: autodiff still differentiates the branch that was not taken, and "
                 "0 · NaN is NaN. An epsilon *outside* the sqrt (`ops.sqrt(n2) + 1e-9`) leaves a 0 · ∞ in the "
                 "sqrt's derivative, which TensorFlow happens to evaluate to 0 and JAX and PyTorch to NaN — the "
                 "check counts it as NaN, so its verdict is the same on every backend. The epsilon must stay "
                 "small — 1e-9 changes a capsule of length 0.01 by 0.0005 %; 1e-4 would change it by half."),
    transfer="the value *and* the gradient must be safe at zero, for any axis (the port's (batch, 16, 10) layout)",
    seed=33,
))


# =========================================================================== 3.4 capsules for other image sizes


def _pc_reference(h, w):
    import keras

    import capslib
    conv1 = keras.layers.Conv2D(256, 9).compute_output_shape((None, h, w, 1))
    _, in_caps, in_dim = capslib.PrimaryCaps(num_types=32, dim=8).compute_output_shape(conv1)
    return (int(in_caps), int(in_dim))


def _pc_stack(h, w, conv1=True, types=32, plus_one=True, square=False):
    if square:
        w = h
    if conv1:
        h, w = h - 8, w - 8
    add = 1 if plus_one else 0
    return ((h - 9) // 2 + add) * ((w - 9) // 2 + add) * types


_PC_ROWS = [(28, 28), (40, 40), (32, 32), (36, 28), (29, 29), (96, 96), (28, 36), (31, 30), (17, 17), (40, 24)]

check_primary_caps_shape = register(Exercise(
    id="3.4", slug="primary-caps-shape", title="A shape puzzle: capsules for other image sizes",
    chapter="03_primary_capsules", section="PrimaryCaps on a real digit",
    func="my_primary_caps_shape", checker="check_primary_caps_shape",
    signature="my_primary_caps_shape(height, width)",
    inputs=[("height", "int", "image height"), ("width", "int", "image width")],
    returns=Tuple([Int(), Int()], "a `tuple` `(in_caps, in_dim)` of two ints"),
    returns_dims="the number of primary capsules and their dimension",
    reference_name="capslib.PrimaryCaps(...).compute_output_shape after conv1",
    make_cases=lambda rng: [Case(hw, f"height={hw[0]}, width={hw[1]}") for hw in _PC_ROWS],
    reference=_pc_reference, twins=False,
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
    task=("affNIST digits are 40×40; CIFAR-10 images 32×32×3; smallNORB pairs 96×96×2. Write "
          "`my_primary_caps_shape(height, width)` returning `(in_caps, in_dim)`, the primary capsules that "
          "CapsNet's layers make from a `height`×`width` image (conv1 256@9×9 stride 1, then the primary conv "
          "256@9×9 stride 2, read as 32 types × 8 dims; the number of image channels does not matter). 28×28 "
          "gives `(1152, 8)`. Predict 32×32 and 96×96 before you run anything."),
    stub='''def my_primary_caps_shape(height, width):
    """Image size -> (in_caps, in_dim) of the primary capsules, a tuple of ints. (28, 28) -> (1152, 8)."""
    raise NotImplementedError''',
    solution='''def my_primary_caps_shape(height, width):
    """Image size -> (in_caps, in_dim) of the primary capsules, a tuple of ints. (28, 28) -> (1152, 8)."""
    def out(size, kernel, stride):
        return (size - kernel) // stride + 1
    h = out(out(height, 9, 1), 9, 2)      # conv1, then the primary conv
    w = out(out(width, 9, 1), 9, 2)
    return (h * w * 32, 8)                 # 32 capsule types per position, 8 dims each''',
    explanation=("40×40 gives 12×12 positions, so 4,608 capsules; 32×32 gives 8×8, 2,048; 96×96 gives 40×40, "
                 "51,200 — and DigitCaps' W grows with them: W grows with the image area."),
    transfer="other image sizes (CIFAR-10, smallNORB, affNIST, non-square): two conv sizes and the 32 types",
    seed=34,
))
