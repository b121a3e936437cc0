"""Chapter 5, dynamic routing: one iteration in capslib's out-major layout, the full loop with the
official code's bias and the couplings, a coupling map in the official code's capsule order, and
two bugs of the TF2 port (its squash axis, its per-dimension logits) to find and fix."""

from __future__ import annotations

import numpy as np

from ._helpers import np_, softmax, squash64, squash_eps
from .framework import SKIP, Array, Case, Exercise, Mistake, Tuple, register

_V_DIMS = ("batch", "out_caps", "out_dim")


def _predictions(rng, batch, in_caps, out_caps, dim, scale=0.2, out_major=False):
    """Predictions with some agreement: half the input capsules lean towards a shared direction per j."""
    base = rng.normal(size=(1, 1, out_caps, dim))
    lean = (rng.random((batch, in_caps, 1, 1)) < 0.5) * base
    u_hat = (scale * rng.normal(size=(batch, in_caps, out_caps, dim)) + scale * lean).astype("float32")
    return u_hat.transpose(0, 2, 1, 3).copy() if out_major else u_hat


# =========================================================================== 5.1 one iteration, out-major


def _step_ref(u_hat, b):
    """One iteration of Procedure 1 in float64, out-major: u_hat (B, J, I, D), b (B, J, I)."""
    u = np.asarray(u_hat, np.float64)
    c = softmax(np.asarray(b, np.float64), axis=1)           # over j
    s = np.einsum("bji,bjid->bjd", c, u)
    v = squash64(s)
    return v, b + np.einsum("bjid,bjd->bji", u, v)


def _step_case(rng, batch, out_caps, in_caps, dim, iteration, zero_j=None, label=""):
    u_hat = _predictions(rng, batch, in_caps, out_caps, dim, out_major=True)
    if zero_j is not None:
        u_hat[:, zero_j] = 0.0
    b = np.zeros((batch, out_caps, in_caps))
    for _ in range(iteration - 1):
        b = _step_ref(u_hat, b)[1]
    it = "b = 0 (iteration 1)" if iteration == 1 else f"b after {iteration - 1} iteration{'s' * (iteration > 2)}"
    return Case((u_hat, b.astype("float32")),
                label or f"u_hat {batch, out_caps, in_caps, dim}, {it}", batch=batch)


def _step_cases(rng):
    return [_step_case(rng, 1, 10, 1152, 16, 1), _step_case(rng, 3, 10, 72, 16, 1),
            _step_case(rng, 3, 10, 72, 16, 2), _step_case(rng, 7, 5, 40, 6, 3),
            _step_case(rng, 2, 10, 72, 16, 2, zero_j=3,
                       label="u_hat (2, 10, 72, 16) whose predictions for j = 3 are all zero, b after 1 iteration")]


def _step_np(u, b, softmax_axis=1, squash=True, use_c=True, accumulate=True, squash_axis=-1, per_dim=False):
    c = softmax(b, axis=softmax_axis)
    s = np.einsum("bji,bjid->bjd", c, u) if use_c else u.sum(axis=2)
    v = squash_eps(s, squash_axis) if squash else s
    if per_dim:
        return v, b[..., None] + u * v[:, :, None]
    a = np.einsum("bjid,bjd->bji", u, v)
    return v, (b + a if accumulate else a)


def _step_naive(u, b):
    c = softmax(b, axis=1)
    s = np.einsum("bji,bjid->bjd", c, u)
    n2 = np.sum(s * s, axis=-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2)
    return v, b + np.einsum("bjid,bjd->bji", u, v)


def _nan_where_predictions_vanish(run):
    """NaN only where every prediction for an output capsule is zero (s_j = 0): a squash unsafe at 0."""
    for i in range(run.n):
        u_hat, got = run.args(i)[0], run.got[i]
        if not isinstance(got, tuple) or len(got) != 2:
            continue
        v, b_new = got
        if v.shape != u_hat.shape[:2] + u_hat.shape[3:] or b_new.shape != u_hat.shape[:3]:
            continue
        dead = np.all(u_hat == 0, axis=(2, 3))                            # (batch, out_caps)
        bad = ~np.isfinite(v).all(axis=-1) | ~np.isfinite(b_new).all(axis=-1)
        if bad.any() and not (bad & ~dead).any():
            return {"where": run.label(i)}
    return None


_SOFTMAX_HINT = ("your couplings sum to 1 over the input capsules i — the softmax must run over the output "
                 "capsules j: each input capsule splits its vote among the digit capsules. In the out-major layout "
                 "(batch, out_caps, in_caps) that is axis 1, not the last axis. (Over i, every coupling starts at "
                 "1/in_caps instead of 1/out_caps.)")
_PER_DIM_HINT = ("you kept the routing logits per dimension: û * v keeps the 16 dims. The agreement is one number "
                 "per (i, j), the dot product over out_dim — sum the product over that axis.")

check_routing_iteration = register(Exercise(
    id="5.1", slug="routing-iteration", title="One routing iteration, out-major", chapter="05_routing",
    section="Weighted sum, squash, agreement", func="my_routing_iteration", checker="check_routing_iteration",
    signature="my_routing_iteration(u_hat, b)",
    inputs=[("u_hat", "(batch, out_caps, in_caps, out_dim)", "capslib's out-major layout"),
            ("b", "(batch, out_caps, in_caps)", "the logits so far, out-major")],
    returns=Tuple([Array(_V_DIMS), Array(("batch", "out_caps", "in_caps"))],
                  "a `tuple` `(v, b_new)` of two float arrays (NumPy, or tensors)"),
    returns_dims="v (batch, out_caps, out_dim) and b_new (batch, out_caps, in_caps)",
    reference_name="Procedure 1, one iteration in float64",
    make_cases=_step_cases, reference=_step_ref, batch_args=(0, 1),
    mistakes=[
        Mistake("softmax_over_inputs", _SOFTMAX_HINT, wrong=lambda u, b: _step_np(u, b, softmax_axis=2)),
        Mistake("logits_per_dimension", _PER_DIM_HINT, wrong=lambda u, b: _step_np(u, b, per_dim=True)),
        Mistake("agreement_not_added",
                "your b_new is only this iteration's agreement: the logits accumulate, b_new = b + û·v. Your "
                "answer is right at iteration 1 (b = 0) and wrong after.",
                wrong=lambda u, b: _step_np(u, b, accumulate=False)),
        Mistake("no_squash",
                "your v is s itself: squash it, v = |s|²/(1 + |s|²) · s/|s| over the out_dim axis, so its length "
                "is below 1.",
                wrong=lambda u, b: _step_np(u, b, squash=False)),
        Mistake("squash_over_wrong_axis",
                "you squashed s over the output capsules (axis 1). Squash each digit capsule's own vector: the last "
                "axis of s (batch, out_caps, out_dim).",
                wrong=lambda u, b: _step_np(u, b, squash_axis=1)),
        Mistake("couplings_not_used",
                "your s ignores the couplings: s_j = Σ_i c_ij û_j|i weights every prediction by c = softmax(b).",
                wrong=lambda u, b: _step_np(u, b, use_c=False)),
        Mistake("nan_at_zero",
                "NaN where all the predictions for an output capsule are zero ({where}): then s_j = 0, and the "
                "chapter's squash_np divides 0 by 0. Use a squash that is safe at zero (exercise 3.3: the epsilon "
                "inside the sqrt).",
                detect=_nan_where_predictions_vanish, example=_step_naive),
    ],
    task=("The cells above ran one iteration in the paper's layout. capslib keeps û and the logits **out-major**: "
          "`u_hat` `(batch, out_caps, in_caps, out_dim)` and `b` `(batch, out_caps, in_caps)`. Write "
          "`my_routing_iteration(u_hat, b)`: one iteration of Procedure 1 in that layout — the couplings "
          "$c = \\text{softmax}_j(b)$, $s_j = \\sum_i c_{ij}\\hat u_{j|i}$, $v = \\text{squash}(s)$, and "
          "$b_\\text{new} = b + \\hat u\\cdot v$ — returning `(v, b_new)`, `v` `(batch, out_caps, out_dim)` and "
          "`b_new` out-major like `b`. Every axis has moved: decide which one each step runs over before you "
          "write it. The check uses 10 and 5 output capsules, 1152, 72 and 40 inputs, iterations 1 to 3, and an "
          "output capsule whose predictions are all zero."),
    stub='''import numpy as np

def my_routing_iteration(u_hat, b):
    """u_hat (batch, out_caps, in_caps, out_dim), b (batch, out_caps, in_caps) -> (v, b_new), out-major."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_routing_iteration(u_hat, b):
    """u_hat (batch, out_caps, in_caps, out_dim), b (batch, out_caps, in_caps) -> (v, b_new), out-major."""
    e = np.exp(b - b.max(axis=1, keepdims=True))
    c = e / e.sum(axis=1, keepdims=True)                  # softmax over j, which is axis 1 here
    s = np.einsum("bji,bjid->bjd", c, u_hat)              # Σ_i c_ij û_j|i: (batch, out_caps, out_dim)
    n2 = np.sum(s ** 2, axis=-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)            # squash over out_dim, safe at s = 0
    b_new = b + np.einsum("bjid,bjd->bji", u_hat, v)      # agreement: a dot product over d
    return v, b_new''',
    explanation=("Three axes, three roles, whatever the layout: the softmax runs over $j$ (axis 1 out-major — the "
                 "last axis is now $i$), the weighted sum contracts $i$, the agreement contracts $d$. Writing "
                 "`b_new = b + …` (not `b += …`) leaves the caller's `b` alone."),
    transfer="capslib's out-major layout: every axis of the chapter's cells moves; a zero output needs a safe squash",
    seed=51,
))


# =========================================================================== 5.2 the full loop, with bias


def _loop_cases(rng):
    def u(b, i, j, d):
        return _predictions(rng, b, i, j, d)

    def bias(j, d):
        return (0.1 * rng.normal(size=(j, d))).astype("float32")

    return [
        Case((u(1, 1152, 10, 16), 3, None), "u_hat (1, 1152, 10, 16), iterations=3, bias=None", batch=1),
        Case((u(3, 72, 10, 16), 1, None), "u_hat (3, 72, 10, 16), iterations=1, bias=None", batch=3),
        Case((u(3, 72, 10, 16), 2, bias(10, 16)), "u_hat (3, 72, 10, 16), iterations=2, bias (10, 16)", batch=3),
        Case((u(5, 40, 5, 6), 5, bias(5, 6)), "u_hat (5, 40, 5, 6), iterations=5, bias (5, 6)", batch=5),
        Case((u(2, 72, 10, 16), 3, None), "u_hat (2, 72, 10, 16) (iterations and bias left to their defaults)",
             batch=2, npass=1),
        Case((u(2, 72, 10, 16), 4, None), "u_hat (2, 72, 10, 16), iterations=4 (bias left to its default)",
             batch=2, npass=2),
        Case((_dead(u(2, 72, 10, 16), 4), 3, None),
             "u_hat (2, 72, 10, 16) whose predictions for j = 4 are all zero, iterations=3, bias=None", batch=2),
    ]


def _dead(u_hat, j, axis=2):
    """u_hat with every prediction for output capsule j set to 0 (then s_j = 0: squash must give 0)."""
    index = [slice(None)] * u_hat.ndim
    index[axis] = j
    u_hat[tuple(index)] = 0.0
    return u_hat


def _loop_reference(u_hat, iterations=3, bias=None):
    import capslib
    v, c = capslib.dynamic_routing(u_hat, iterations=iterations, return_coupling=True, bias=bias)
    return np_(v), np_(c)


def _loop_np(u, r=3, bias=None, softmax_axis=2, per_dim=False, accumulate=True, bias_where="s", c_after=False,
             iterations_override=None):
    r = iterations_override(r) if iterations_override else r
    b = np.zeros(u.shape if per_dim else u.shape[:3])
    for _ in range(r):
        c = softmax(b, axis=softmax_axis)
        s = (c * u).sum(axis=1) if per_dim else np.einsum("bij,bijd->bjd", c, u)
        if bias is not None and bias_where == "s":
            s = s + bias
        v = squash_eps(s)
        if bias is not None and bias_where == "v":
            v = v + bias
        a = u * v[:, None] if per_dim else np.einsum("bijd,bjd->bij", u, v)
        b = b + a if accumulate else a
    if c_after:
        c = softmax(b, axis=softmax_axis)
    if per_dim:
        c = c.mean(axis=-1)
    return v, c


check_routing = register(Exercise(
    id="5.2", slug="routing-loop", title="The full routing loop, with the official code's bias", chapter="05_routing",
    section="The full loop, checked against capslib", func="my_routing", checker="check_routing",
    signature="my_routing(u_hat, iterations=3, bias=None)",
    inputs=[("u_hat", "(batch, in_caps, out_caps, out_dim)", "the paper's layout"),
            ("iterations", "int", "r ≥ 1"), ("bias", "None or (out_caps, out_dim)", "added to every s_j")],
    returns=Tuple([Array(_V_DIMS), Array(("batch", "in_caps", "out_caps"))],
                  "a `tuple` `(v, c)` of two float arrays (NumPy, or tensors)"),
    returns_dims="v (batch, out_caps, out_dim) and c (batch, in_caps, out_caps), the couplings that made v",
    reference_name="capslib.dynamic_routing(u_hat, iterations, return_coupling=True, bias=bias)",
    make_cases=_loop_cases, reference=_loop_reference, batch_args=(0,),
    mistakes=[
        Mistake("softmax_over_inputs", _SOFTMAX_HINT.replace("In the out-major layout (batch, out_caps, in_caps) "
                                                             "that is axis 1, not the last axis. ", ""),
                wrong=lambda u, r=3, bias=None: _loop_np(u, r, bias, softmax_axis=1)),
        Mistake("wrong_iteration_count",
                "your loop runs {variant}. Procedure 1 runs `iterations` times, each computing c, s, v and then "
                "updating b; the v of the last pass is the answer.",
                wrong={"one iteration too many": lambda u, r=3, bias=None: _loop_np(u, r + 1, bias),
                       "one iteration too few": lambda u, r=3, bias=None: _loop_np(u, r - 1, bias) if r > 1 else SKIP,
                       "3 times whatever `iterations` says": lambda u, r=3, bias=None: _loop_np(u, 3, bias)}),
        Mistake("logits_per_dimension", _PER_DIM_HINT,
                wrong=lambda u, r=3, bias=None: _loop_np(u, r, bias, per_dim=True)),
        Mistake("agreement_not_added",
                "your logits are replaced by each iteration's agreement instead of accumulating: b = b + û·v.",
                wrong=lambda u, r=3, bias=None: _loop_np(u, r, bias, accumulate=False)),
        Mistake("bias_ignored",
                "right without a bias, wrong with one: add `bias` (out_caps, out_dim) to s, every iteration, "
                "before the squash — s_j = Σ_i c_ij û_j|i + bias_j.",
                wrong=lambda u, r=3, bias=None: _loop_np(u, r, None)),
        Mistake("bias_after_squash",
                "you added the bias to v, after the squash; the official code adds it to s, before: "
                "v = squash(Σ_i c_ij û_j|i + bias_j), so v's length stays below 1.",
                wrong=lambda u, r=3, bias=None: _loop_np(u, r, bias, bias_where="v")),
        Mistake("c_after_last_update",
                "your c is computed from b after the last agreement update — the couplings the *next* iteration "
                "would use. Return the c that made the returned v: the one of the last iteration.",
                wrong=lambda u, r=3, bias=None: _loop_np(u, r, bias, c_after=True)),
    ],
    task=("The paper's official code adds a learned bias to every $s_j$ before the squash (capslib: "
          "`DigitCaps(use_bias=True)`). Write `my_routing(u_hat, iterations=3, bias=None)`: Procedure 1 in the "
          "paper's layout, `u_hat` `(batch, in_caps, out_caps, out_dim)`, with $s_j = \\sum_i c_{ij}\\hat u_{j|i} "
          "+ \\text{bias}_j$ when `bias` `(out_caps, out_dim)` is given, returning `(v, c)`: `v` "
          "`(batch, out_caps, out_dim)` and the couplings `c` `(batch, in_caps, out_caps)` **that produced that "
          "v**. Any sizes: the check uses 1152, 72 and 40 input capsules and 10 or 5 outputs, 1 to 5 iterations, "
          "an output capsule whose predictions are all zero, calls it twice on the same input and splits a batch "
          "into single examples."),
    stub='''import numpy as np

def my_routing(u_hat, iterations=3, bias=None):
    """u_hat (batch, in_caps, out_caps, out_dim) -> (v (batch, out_caps, out_dim), c (batch, in_caps, out_caps))."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_routing(u_hat, iterations=3, bias=None):
    """u_hat (batch, in_caps, out_caps, out_dim) -> (v (batch, out_caps, out_dim), c (batch, in_caps, out_caps))."""
    b = np.zeros(u_hat.shape[:3])                          # (batch, in_caps, out_caps): fresh, every call
    for _ in range(iterations):
        e = np.exp(b - b.max(axis=-1, keepdims=True))
        c = e / e.sum(axis=-1, keepdims=True)              # softmax over j
        s = np.einsum("bij,bijd->bjd", c, u_hat)           # (batch, out_caps, out_dim)
        if bias is not None:
            s = s + bias                                   # (out_caps, out_dim) broadcasts over the batch
        n2 = np.sum(s ** 2, axis=-1, keepdims=True)
        v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)         # squash
        b = b + np.einsum("bijd,bjd->bij", u_hat, v)       # agreement
    return v, c''',
    explanation=("The bias enters every iteration, before the squash, so it shifts both v and the next agreements. "
                 "`c` is the last *used* couplings: the final update of b does not change anything returned "
                 "(capslib skips it). `b` is a local array with a batch axis, so every example and every call "
                 "starts from zero."),
    transfer="adds the official code's bias and the couplings, for any sizes",
    seed=52,
))

# =========================================================================== 5.3 coupling map, official order


def _coupling_cases(rng):
    def c(b, i, j):
        return softmax(2.0 * rng.normal(size=(b, i, j)), axis=2).astype("float32")

    return [
        Case((c(1, 1152, 10), 7, 6, 6), "c (1, 1152, 10), j=7, height=6, width=6", batch=1),
        Case((c(1, 1152, 10), 0, 6, 6), "c (1, 1152, 10), j=0 (height and width left to their defaults)",
             batch=1, npass=2),
        Case((c(3, 1152, 10), 3, 6, 6), "c (3, 1152, 10), j=3, height=6, width=6", batch=3),
        Case((c(2, 32 * 4 * 7, 10), 9, 4, 7), "c (2, 896, 10), j=9, height=4, width=7", batch=2),
        Case((c(7, 32 * 8 * 8, 47), 40, 8, 8), "c (7, 2048, 47), j=40, height=8, width=8", batch=7),
        Case((c(2, 32 * 5 * 3, 10), 5, 5, 3), "c (2, 480, 10), j=5, height=5, width=3", batch=2),
    ]


def _picked_input_capsule(text, run, i):
    """The error of reshaping c[:, j] — (batch, out_caps) numbers — into the grid."""
    c = run.args(i)[0]
    return f"cannot reshape array of size {c.shape[0] * c.shape[2]} into shape" in text


def _coupling_map_reference(c, j, height=6, width=6):
    """The definition: i = t·height·width + row·width + col, mean over the 32 types t."""
    b = c.shape[0]
    out = np.zeros((b, height, width))
    for t in range(32):
        for row in range(height):
            for col in range(width):
                out[:, row, col] += c[:, t * height * width + row * width + col, j]
    return out / 32


check_coupling_map = register(Exercise(
    id="5.3", slug="coupling-map", title="A shape puzzle: where does a digit capsule listen, official order?",
    chapter="05_routing", section="On a real digit", func="my_coupling_map", checker="check_coupling_map",
    signature="my_coupling_map(c, j, height=6, width=6)",
    inputs=[("c", "(batch, in_caps, out_caps)", "couplings, in_caps = 32·height·width in type-major order"),
            ("j", "int", "a digit capsule"), ("height", "int", "rows of the capsule grid"),
            ("width", "int", "columns of the capsule grid")],
    returns=Array(("batch", "height", "width")),
    returns_dims="(batch, height, width): at each position, the mean over the 32 types of the couplings to j",
    reference_name="the definition, i = t·height·width + row·width + col",
    make_cases=_coupling_cases, reference=_coupling_map_reference, batch_args=(0,),
    mistakes=[
        Mistake("position_major_order",
                "you unflattened i in capslib's order, (row, col, type). These couplings come from a model with "
                "the official code's order, type first: i = t·height·width + row·width + col, so reshape to "
                "(batch, 32, height, width) and average axis 1.",
                wrong=lambda c, j, h=6, w=6: c[:, :, j].reshape(c.shape[0], h, w, 32).mean(axis=-1)),
        Mistake("sum_not_mean",
                "you summed over the 32 types; the task asks for their mean (divide by 32).",
                wrong=lambda c, j, h=6, w=6: c[:, :, j].reshape(c.shape[0], 32, h, w).sum(axis=1)),
        Mistake("rows_cols_swapped",
                "your map reads the grid column-major: within a type, i runs over the columns fastest, "
                "i = t·height·width + row·width + col — the row is the slower index.",
                wrong=lambda c, j, h=6, w=6: c[:, :, j].reshape(c.shape[0], 32, w, h).mean(axis=1).transpose(0, 2, 1)),
        Mistake("picked_input_capsule",
                "c[:, j] picks input capsule j, not output capsule j: the output capsules are c's *last* axis, "
                "c[:, :, j] (batch, in_caps).",
                error=_picked_input_capsule,
                example=lambda c, j, h=6, w=6: c[:, j].reshape(c.shape[0], 32, h, w).mean(axis=1)),
    ],
    task=("The cell above averaged capslib's couplings over the types with `c.reshape(6, 6, 32, 10)`. Couplings "
          "from a model built like the paper's official code number the input capsules **type first**, "
          "$i = t\\cdot\\text{height}\\cdot\\text{width} + \\text{row}\\cdot\\text{width} + \\text{col}$ "
          "(exercise 3.1), and other image sizes give other grids. Write `my_coupling_map(c, j, height=6, width=6)` "
          "returning, for digit capsule `j`, a `(batch, height, width)` map: at each position the **mean** coupling "
          "to `j` of the 32 capsule types there."),
    stub='''import numpy as np

def my_coupling_map(c, j, height=6, width=6):
    """c (batch, 32*height*width, out_caps), type-major i -> (batch, height, width): mean over the 32 types."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_coupling_map(c, j, height=6, width=6):
    """c (batch, 32*height*width, out_caps), type-major i -> (batch, height, width): mean over the 32 types."""
    to_j = c[:, :, j]                                          # (batch, in_caps)
    grid = to_j.reshape(c.shape[0], 32, height, width)         # i = t*height*width + row*width + col
    return grid.mean(axis=1)                                   # (batch, height, width)''',
    explanation=("The order of the axes in the reshape is the order of the digits of $i$, slowest first: type, "
                 "row, col. capslib's order would be `reshape(batch, height, width, 32)` and a mean over the last "
                 "axis; mixing the two gives a map of the right shape that scrambles the positions."),
    transfer="the official code's type-major order and other grid sizes, where the cell above is capslib's 6×6",
    seed=53,
))


# =========================================================================== 5.4 find the bug: the port's squash


def _port_squash(s):
    norm = np.linalg.norm(s, axis=2, keepdims=True)
    return norm * s / (1 + norm ** 2)


def _port_squash_cases(rng):
    s2 = (0.5 * rng.normal(size=(3, 16, 10))).astype("float32")
    s2[1, :, 4] = 0.0                                        # a zero capsule
    s2[2, :, 7] *= 0.02                                      # a short one
    return [
        Case(((0.5 * rng.normal(size=(1, 16, 10))).astype("float32"),), batch=1),
        Case((s2,), "s (3, 16, 10) with a zero capsule and a short one", batch=3),
        Case(((0.3 * rng.normal(size=(7, 16, 10))).astype("float32"),), batch=7),
        Case(((0.5 * rng.normal(size=(2, 8, 47))).astype("float32"),), "s (2, 8, 47): 47 capsules of 8 dims",
             batch=2),
        Case(((20.0 * rng.normal(size=(3, 16, 10))).astype("float32"),), "s (3, 16, 10), long capsules", batch=3),
    ]


def _nan_at_zero_columns(run):
    for i in range(run.n):
        s = run.args(i)[0]
        got = run.got[i]
        if not isinstance(got, np.ndarray) or got.shape != s.shape:
            continue
        bad = ~np.isfinite(got)
        if bad.any() and np.all(~bad | np.all(s == 0, axis=1, keepdims=True)):
            return {"where": run.label(i)}
    return None


check_port_squash = register(Exercise(
    id="5.4", slug="port-squash", title="Find the bug: the TF2 port's squash", chapter="05_routing",
    section="The wrong softmax axis on the same digit", func="my_port_squash", checker="check_port_squash",
    signature="my_port_squash(s)",
    inputs=[("s", "(batch, out_dim, out_caps)", "the port's layout: one capsule per column")],
    returns=Array(("batch", "out_dim", "out_caps")),
    returns_dims="v in the same layout, each capsule (column) squashed",
    reference_name="Eq. 1 in float64 over the out_dim axis",
    make_cases=_port_squash_cases, reference=lambda s: squash64(s, axis=1), batch_args=(0,),
    mistakes=[
        Mistake("port_unchanged",
                "that is still the port's squash: its norm runs over axis 2, the 10 *classes*, so it mixes "
                "different capsules — every entry is scaled by the length of a row across the classes. In the "
                "(batch, 16, 10) layout one capsule is a column: take the norm over axis 1.",
                wrong=_port_squash),
        Mistake("layout_changed",
                "right values, but you returned capslib's layout (batch, out_caps, out_dim); the port's next steps "
                "expect its own (batch, out_dim, out_caps): keep the layout of s.",
                wrong=lambda s: squash64(s, axis=1).transpose(0, 2, 1)),
        Mistake("norm_over_both_axes",
                "your norm runs over both the dims and the classes: one capsule is one column, the out_dim numbers "
                "at one class — the norm over axis 1 alone.",
                wrong=lambda s: (lambda n: n * s / (1 + n ** 2))(np.linalg.norm(s, axis=(1, 2), keepdims=True))),
        Mistake("nan_at_zero",
                "NaN at a zero capsule ({where}). The port's form |s|·s/(1 + |s|²) never divides by |s|: keep it, "
                "or put an epsilon inside the sqrt.",
                detect=_nan_at_zero_columns,
                example=lambda s: (lambda n: n ** 2 / (1 + n ** 2) * s / n)(np.linalg.norm(s, axis=1, keepdims=True))),
    ],
    task=("The TF2 port keeps its digit capsules as **columns**, `s` of shape `(batch, 16, 10)` = (batch, out_dim, "
          "out_caps), and squashes them with `port_squash` below (rewritten in NumPy). Its formula, "
          "$|s|\\,s/(1+|s|^2)$, is Eq. 1 rearranged — and safe at zero — yet its capsule lengths are wrong. "
          "Compute the lengths of `port_squash(s)`'s capsules for a small `s` and compare with "
          "$|s|^2/(1+|s|^2)$; then write `my_port_squash(s)`, the fix, which keeps the port's layout and works "
          "for any number of capsules and dims."),
    stub='''import numpy as np

def port_squash(s):
    """The port's squash, rewritten in NumPy: s (batch, 16, 10), each capsule a column of 16."""
    norm = np.linalg.norm(s, axis=2, keepdims=True)      # |s|, (batch, 16, 1)
    return norm * s / (1 + norm ** 2)                    # = |s|^2/(1+|s|^2) * s/|s|

def my_port_squash(s):
    """s (batch, out_dim, out_caps), one capsule per column -> v, same layout, each column squashed."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_port_squash(s):
    """s (batch, out_dim, out_caps), one capsule per column -> v, same layout, each column squashed."""
    norm = np.linalg.norm(s, axis=1, keepdims=True)      # one length per capsule: (batch, 1, out_caps)
    return norm * s / (1 + norm ** 2)''',
    explanation=("In `(batch, 16, 10)` axis 2 runs over the classes, so `norm(s, axis=2)` is the length of a *row* — "
                 "dimension $d$ of all ten capsules — and every capsule is scaled by numbers that belong to the other "
                 "nine. The output still has the right shape and values below 1, so nothing fails. Which axis a "
                 "reduction runs over follows from the layout: write the named dims next to every reshape."),
    transfer="find the bug: a squash over the class axis in the port's (batch, 16, 10) layout",
    seed=54,
))


# =========================================================================== 5.5 find the bug: per-dimension logits


def _port_routing_reference(u_hat, iterations=3):
    import capslib
    v = capslib.dynamic_routing(np.ascontiguousarray(u_hat.transpose(0, 1, 3, 2)), iterations=iterations)
    return np_(v).transpose(0, 2, 1)


def _port_loop(u, r=3, per_dim=True, softmax_axis=3, squash_axis=1, keep_both=False):
    b = np.zeros(u.shape if per_dim else u.shape[:2] + (1, u.shape[3]))
    for _ in range(r):
        c = softmax(b, axis=softmax_axis)
        s = np.sum(c * u, axis=1)
        v = squash_eps(s, squash_axis)
        a = u * v[:, None]
        b = b + (a if per_dim else a.sum(axis=2, keepdims=True))
    return v


def _port_routing_cases(rng):
    def u(b, i, d, j):
        return _predictions(rng, b, i, j, d).transpose(0, 1, 3, 2).copy()

    return [
        Case((u(1, 1152, 16, 10), 3), "u_hat (1, 1152, 16, 10) (iterations left to its default)", batch=1, npass=1),
        Case((u(3, 72, 16, 10), 1), "u_hat (3, 72, 16, 10), iterations=1", batch=3),
        Case((u(3, 72, 16, 10), 2), "u_hat (3, 72, 16, 10), iterations=2", batch=3),
        Case((u(4, 40, 6, 5), 5), "u_hat (4, 40, 6, 5), iterations=5", batch=4),
        Case((u(2, 72, 16, 10), 3), "u_hat (2, 72, 16, 10), iterations=3", batch=2),
        Case((_dead(u(2, 72, 16, 10), 6, axis=3), 3),
             "u_hat (2, 72, 16, 10) whose predictions for j = 6 are all zero, iterations=3", batch=2),
    ]


check_port_routing = register(Exercise(
    id="5.5", slug="port-routing", title="Find the bug: the TF2 port's routing logits", chapter="05_routing",
    section="The wrong softmax axis on the same digit", func="my_port_routing", checker="check_port_routing",
    signature="my_port_routing(u_hat, iterations=3)",
    inputs=[("u_hat", "(batch, in_caps, out_dim, out_caps)", "the port's layout"), ("iterations", "int", "r ≥ 1")],
    returns=Array(("batch", "out_dim", "out_caps")), returns_dims="v in the port's layout (batch, out_dim, out_caps)",
    reference_name="capslib.dynamic_routing (on the transposed predictions)",
    make_cases=_port_routing_cases, reference=_port_routing_reference, batch_args=(0,),
    mistakes=[
        Mistake("port_unchanged",
                "that is still the port's routing: its logits b are (batch, in_caps, 16, 10), one per output "
                "*dimension*, so each of the 16 numbers of a capsule is routed on its own. Procedure 1 has one "
                "logit per (i, j): b_ij += û_j|i · v_j, the dot product — sum u_hat * v over the 16 dims "
                "(axis 2) and keep b (batch, in_caps, 1, out_caps) so it still broadcasts.",
                wrong=lambda u, r=3: _port_loop(u, r, per_dim=True)),
        Mistake("squash_over_the_classes",
                "your logits are right, but the squash runs over the classes again (the port's other bug, "
                "exercise 5.4): squash each column, axis 1 of (batch, out_dim, out_caps).",
                wrong={"logits fixed": lambda u, r=3: _port_loop(u, r, per_dim=False, squash_axis=2),
                       "both bugs": lambda u, r=3: _port_loop(u, r, per_dim=True, squash_axis=2)}),
        Mistake("softmax_over_dims",
                "after summing the agreement over the dims, your softmax runs over axis 2, which now has size 1 "
                "(every coupling is 1), or over the dims: it must run over the output capsules j, the last axis.",
                wrong=lambda u, r=3: _port_loop(u, r, per_dim=False, softmax_axis=2)),
        Mistake("softmax_over_inputs",
                "your couplings sum to 1 over the input capsules (axis 1); the softmax runs over the output "
                "capsules j, the last axis of the port's layout.",
                wrong=lambda u, r=3: _port_loop(u, r, per_dim=False, softmax_axis=1)),
    ],
    task=("`port_routing` below is the TF2 port's routing loop (rewritten in NumPy, with its squash already fixed as "
          "in exercise 5.4). It runs, and its output has the right shape — but its logits `b` have the shape of "
          "`u_hat`, `(batch, 1152, 16, 10)`. What does Procedure 1 say `b` is? Write `my_port_routing(u_hat, "
          "iterations=3)`, the fix, in the port's layout: `u_hat` `(batch, in_caps, out_dim, out_caps)` in, `v` "
          "`(batch, out_dim, out_caps)` out, for any number of input and output capsules (the check includes an "
          "output capsule whose predictions are all zero)."),
    stub='''import numpy as np

def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)

def squash_columns(s):
    """Exercise 5.4's fixed squash: s (batch, 16, 10), each capsule a column."""
    n2 = np.sum(s ** 2, axis=1, keepdims=True)
    return n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)

def port_routing(u_hat, iterations=3):
    """The port's routing, rewritten in NumPy: u_hat (batch, 1152, 16, 10) -> v (batch, 16, 10)."""
    b = np.zeros(u_hat.shape)                     # the logits: (batch, 1152, 16, 10)
    for _ in range(iterations):
        c = softmax(b, axis=3)                    # over the 10 output capsules j
        s = np.sum(c * u_hat, axis=1)             # sum over i: (batch, 16, 10)
        v = squash_columns(s)
        b = b + u_hat * v[:, None, :, :]          # the agreement
    return v

def my_port_routing(u_hat, iterations=3):
    """u_hat (batch, in_caps, out_dim, out_caps) -> v (batch, out_dim, out_caps): Procedure 1, fixed."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_port_routing(u_hat, iterations=3):
    """u_hat (batch, in_caps, out_dim, out_caps) -> v (batch, out_dim, out_caps): Procedure 1, fixed."""
    batch, in_caps, _, out_caps = u_hat.shape
    b = np.zeros((batch, in_caps, 1, out_caps))              # one logit per (i, j); the 1 broadcasts over d
    for _ in range(iterations):
        e = np.exp(b - b.max(axis=3, keepdims=True))
        c = e / e.sum(axis=3, keepdims=True)                 # softmax over j
        s = np.sum(c * u_hat, axis=1)                        # (batch, out_dim, out_caps)
        n2 = np.sum(s ** 2, axis=1, keepdims=True)
        v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)           # squash each column
        b = b + np.sum(u_hat * v[:, None], axis=2, keepdims=True)   # û_j|i · v_j: a dot product over d
    return v''',
    explanation=("With a logit per dimension, each of the 16 numbers of a prediction gets its own coupling: the "
                 "capsule is split into 16 scalars that are routed independently, and a prediction that agrees in "
                 "direction no longer counts as one vote. The fix sums the agreement over the 16 dims — the dot "
                 "product $\\hat u_{j|i}\\cdot v_j$ — and keeps a size-1 axis so the couplings still broadcast."),
    transfer="find the bug: per-dimension routing logits in the port's layout",
    seed=55,
))
