"""Chapter 6, margin loss, masking and the decoder: capsule lengths, the margin loss's gradient,
masking by an integer label and by length (from the port's layout), the decoder's sizes, every
layer's parameter count for other images, and the reconstruction loss from flat pixels."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._helpers import np_, squash64, value_and_grad
from .framework import (SAFETY_EPS, Array, Band, Case, Dict, Exercise, Int, Mistake, Number, Tuple, register)

# =========================================================================== 6.1 capsule lengths


def _squashed(rng, shape, scale=1.0):
    return squash64(scale * rng.normal(size=shape)).astype("float32")


def _length_cases(rng):
    v = _squashed(rng, (2, 10, 16))
    v[1, 4] = 0.0
    v[0, 2] *= 1e-4 / np.linalg.norm(v[0, 2])                # a capsule of length 1e-4
    v[0, 7] *= 1e-2 / np.linalg.norm(v[0, 7])
    return [Case((_squashed(rng, (b, 10, 16)),), batch=b) for b in (1, 3, 7)] + [
        Case((v,), "v (2, 10, 16) with a zero capsule and two short ones (lengths 1e-4 and 1e-2)", batch=2),
        Case((_squashed(rng, (2, 47, 8)),), "v (2, 47, 8): 47 capsules of 8 dims", batch=2),
    ]


def _lengths_reference(v):
    """The exact length, and up to a safety epsilon of SAFETY_EPS inside the sqrt (one tolerance policy)."""
    n2 = np.sum(np.asarray(v, np.float64) ** 2, axis=-1)
    allowance = "a safety epsilon of at most " + f"{SAFETY_EPS:.0e}".replace("e-0", "e-") + " inside the sqrt"
    return Band(np.sqrt(n2), np.sqrt(n2 + SAFETY_EPS), allowance)


check_capsule_lengths = register(Exercise(
    id="6.1", slug="capsule-lengths", title="Capsule lengths", chapter="06_losses_and_decoder",
    section="The margin loss (Eq. 4)", func="my_capsule_lengths", checker="check_capsule_lengths",
    signature="my_capsule_lengths(v)",
    inputs=[("v", "(batch, out_caps, out_dim)", "digit capsules")],
    returns=Array(("batch", "out_caps")), returns_dims="(batch, out_caps): each capsule's length, in [0, 1)",
    reference_name="the Euclidean norm in float64 (a safety epsilon up to 1e-7 inside the sqrt allowed)",
    make_cases=_length_cases, reference=_lengths_reference, batch_args=(0,),
    mistakes=[
        Mistake("norm_over_capsules",
                "you took the norm over the capsules (axis 1), giving (batch, out_dim). A capsule's length is the "
                "norm of its own numbers: the last axis, np.sqrt(np.sum(v**2, axis=-1)) → (batch, out_caps).",
                wrong=lambda v: np.sqrt(np.sum(v * v, axis=1))),
        Mistake("forgot_sqrt",
                "those are squared lengths |v|²: take the square root.",
                wrong=lambda v: np.sum(v * v, axis=-1)),
        Mistake("sum_not_norm",
                "you added the components; the length is the Euclidean norm, sqrt(Σ_d v_d²) — components can "
                "be negative.",
                wrong={"sum": lambda v: v.sum(axis=-1), "sum of |v_d|": lambda v: np.abs(v).sum(axis=-1)}),
        Mistake("kept_dims",
                "right numbers, shape (batch, out_caps, 1): drop the summed axis (no keepdims here) — the lengths "
                "are (batch, out_caps), one probability per class.",
                wrong=lambda v: np.sqrt(np.sum(v * v, axis=-1, keepdims=True))),
        Mistake("epsilon_too_big",
                "right idea, but your epsilon ({variant}) changes short capsules: a zero capsule gets length "
                "sqrt(eps), and one of length 1e-4 moves too. The check accepts at most 1e-7 inside the sqrt "
                "(a zero capsule then comes out 3.2e-4 long); NumPy lengths need no epsilon at all.",
                wrong={f"eps={e:g} inside the sqrt": (lambda e: lambda v: np.sqrt(np.sum(v * v, axis=-1) + e))(e)
                       for e in (1e-6, 1e-5, 1e-4, 1e-3)}),
    ],
    task=("Write `my_capsule_lengths(v)`: the length of each digit capsule, `(batch, out_caps, out_dim)` → "
          "`(batch, out_caps)`. These are the class probabilities the margin loss reads. The check also uses "
          "47 capsules of 8 dims, a zero capsule and capsules of length 1e-4. It compares with the exact length "
          "and accepts a safety epsilon of at most 1e-7 inside the square root, nothing larger: each of your "
          "lengths must lie between $|v|$ and $\\sqrt{|v|^2 + 10^{-7}}$ (a zero capsule may come out as "
          "3.2e-4, no more), within the book's relative tolerance of 1e-4."),
    stub='''import numpy as np

def my_capsule_lengths(v):
    """v (batch, out_caps, out_dim) -> lengths (batch, out_caps)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_capsule_lengths(v):
    """v (batch, out_caps, out_dim) -> lengths (batch, out_caps)."""
    return np.sqrt(np.sum(v ** 2, axis=-1))''',
    explanation=("`np.linalg.norm(v, axis=-1)` is the same. capslib adds 1e-20 inside the sqrt so that the gradient "
                 "stays finite at a zero capsule while the lengths of an untrained network (about 1e-6) are not "
                 "changed; an epsilon of 1e-4 would make every zero capsule 0.01 long."),
    seed=61,
))


# =========================================================================== 6.2 the margin loss's gradient


def _away_from_kinks(x):
    for m in (0.1, 0.9):
        near = np.abs(x - m) < 0.02
        x = np.where(near, x + np.where(x >= m, 0.03, -0.03), x)
    return x


def _margin_case(rng, b, classes=10, present=1, label=""):
    y = np.zeros((b, classes), "float32")
    for n in range(b):
        y[n, rng.choice(classes, present, replace=False)] = 1.0
    lengths = _away_from_kinks(rng.uniform(0.0, 1.0, (b, classes)))
    lengths[0, :2] = (0.05, 0.95)                                       # both inside a margin for some class
    return Case((y, lengths.astype("float32")), label, batch=b)


def _margin_cases(rng):
    return [_margin_case(rng, 1), _margin_case(rng, 3), _margin_case(rng, 7),
            _margin_case(rng, 4, present=2, label="y (4, 10) with two digits present per image, lengths (4, 10)"),
            _margin_case(rng, 2, classes=47, label="y (2, 47), lengths (2, 47): 47 classes")]


def _margin_grad_reference(y, lengths):
    import capslib
    _, g, _ = value_and_grad(lambda l: capslib.margin_loss(y, l), np.asarray(lengths, "float32"), 1.0)
    return g


def _grad_np(y, l, m_plus=0.9, m_minus=0.1, lam=0.5, present_lam=1.0, batch="mean", relu=True, two=2.0,
             classes="sum"):
    pos = (lambda x: np.maximum(x, 0.0)) if relu else (lambda x: x)
    g = -two * present_lam * y * pos(m_plus - l) + two * lam * (1 - y) * pos(l - m_minus)
    if batch == "mean":
        g = g / l.shape[0]
    if classes == "mean":
        g = g / l.shape[1]
    return g


check_margin_loss_grad = register(Exercise(
    id="6.2", slug="margin-loss-gradient", title="The margin loss's gradient", chapter="06_losses_and_decoder",
    section="By hand, for a batch of four", func="my_margin_loss_grad", checker="check_margin_loss_grad",
    signature="my_margin_loss_grad(y, lengths)",
    inputs=[("y", "(batch, classes)", "labels: 1 where a class is present, else 0"),
            ("lengths", "(batch, classes)", "capsule lengths in [0, 1)")],
    returns=Array(("batch", "classes")),
    returns_dims="∂loss/∂lengths, (batch, classes), for the loss summed over classes and averaged over the batch",
    reference_name="the gradient of capslib.margin_loss (autodiff)",
    make_cases=_margin_cases, reference=_margin_grad_reference,
    mistakes=[
        Mistake("not_divided_by_batch",
                "your gradient is batch times too big: the loss is the *mean* over the batch, so each image's "
                "terms are divided by the batch size, and so are their derivatives.",
                wrong=lambda y, l: _grad_np(y, l, batch="sum")),
        Mistake("sign_flipped",
                "your signs are flipped: a present class shorter than 0.9 has a *negative* derivative (making it "
                "longer lowers the loss); an absent class longer than 0.1 a positive one.",
                wrong=lambda y, l: -_grad_np(y, l)),
        Mistake("factor_two_missing",
                "you dropped the 2 of d(x²)/dx = 2x: the derivative of max(0, 0.9 − |v|)² is −2·max(0, 0.9 − |v|).",
                wrong=lambda y, l: _grad_np(y, l, two=1.0)),
        Mistake("lambda_missing",
                "the absent classes' term carries λ = 0.5, and so does its derivative: 2λ·max(0, |v| − 0.1).",
                wrong=lambda y, l: _grad_np(y, l, lam=1.0)),
        Mistake("lambda_on_present",
                "λ = 0.5 weighs the *absent* classes (1 − T_k), not the present one.",
                wrong={"on both": lambda y, l: _grad_np(y, l, present_lam=0.5),
                       "on the present only": lambda y, l: _grad_np(y, l, present_lam=0.5, lam=1.0)}),
        Mistake("margins_swapped",
                "m⁺ and m⁻ are swapped: the present class is pushed above m⁺ = 0.9, the absent ones below m⁻ = 0.1.",
                wrong=lambda y, l: _grad_np(y, l, m_plus=0.1, m_minus=0.9)),
        Mistake("no_relu",
                "your gradient is not 0 inside the margins: a present capsule longer than 0.9 (or an absent one "
                "shorter than 0.1) costs nothing, so its derivative is 0 — keep the max(0, ·).",
                wrong=lambda y, l: _grad_np(y, l, relu=False)),
        Mistake("mean_over_classes",
                "your gradient is also divided by the number of classes: the loss *sums* L_k over the classes "
                "(and averages only over the batch).",
                wrong=lambda y, l: _grad_np(y, l, classes="mean")),
    ],
    task=("Training does not use the loss itself but its gradient. Write `my_margin_loss_grad(y, lengths)`: the "
          "derivative of the margin loss you just computed — Eq. 4 with $m^+ = 0.9$, $m^- = 0.1$, "
          "$\\lambda = 0.5$, summed over the classes and **averaged over the batch** — with respect to every "
          "length, `(batch, classes)`. Derive it on paper first (the plot at the top of the chapter shows each "
          "term's derivative). `y` may mark several present classes (1) per image; the check also uses 47 "
          "classes. No lengths sit exactly on a margin, where the derivative jumps."),
    stub='''import numpy as np

def my_margin_loss_grad(y, lengths):
    """y (batch, classes) of 0/1, lengths (batch, classes) -> d loss / d lengths, (batch, classes)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_margin_loss_grad(y, lengths):
    """y (batch, classes) of 0/1, lengths (batch, classes) -> d loss / d lengths, (batch, classes)."""
    m_plus, m_minus, lam = 0.9, 0.1, 0.5
    present = -2 * y * np.maximum(0.0, m_plus - lengths)             # d/dl of max(0, m+ - l)^2
    absent = 2 * lam * (1 - y) * np.maximum(0.0, lengths - m_minus)  # d/dl of lam * max(0, l - m-)^2
    return (present + absent) / lengths.shape[0]                     # the mean over the batch''',
    explanation=("Each length appears in one term only, so the derivative is elementwise: "
                 "$-2T_k\\max(0, m^+ - |v_k|) + 2\\lambda(1-T_k)\\max(0, |v_k| - m^-)$, divided by the batch size "
                 "because of the mean. Inside its margin a capsule gets exactly 0: the loss stops pushing it."),
    transfer="the gradient of the loss computed by hand in the cell before: derive, then vectorise",
    seed=62,
))


# =========================================================================== 6.3 masking by an integer label


def _not_longest_labels(rng, v):
    longest = np.linalg.norm(v, axis=-1).argmax(axis=-1)
    return ((longest + rng.integers(1, v.shape[1], v.shape[0])) % v.shape[1]).astype("int64")


def _mask_label_cases(rng):
    cases = []
    for b, j, d in ((1, 10, 16), (3, 10, 16), (7, 10, 16), (2, 47, 8)):
        v = _squashed(rng, (b, j, d))
        cases.append(Case((v, _not_longest_labels(rng, v)), batch=b))
    return cases


def _mask_reference(v, labels):
    import capslib
    return np_(capslib.Mask()(v, np.eye(v.shape[1], dtype="float32")[labels]))


def _mask_np(v, idx, flatten=True, order="jd"):
    m = v * np.eye(v.shape[1], dtype=v.dtype)[idx][:, :, None]
    if not flatten:
        return m
    if order == "dj":
        m = m.transpose(0, 2, 1)
    return m.reshape(v.shape[0], -1)


check_mask_by_label = register(Exercise(
    id="6.3", slug="mask-by-label", title="Masking by an integer label", chapter="06_losses_and_decoder",
    section="Masking: one capsule for the decoder", func="my_mask_by_label", checker="check_mask_by_label",
    signature="my_mask_by_label(v, labels)",
    inputs=[("v", "(batch, out_caps, out_dim)", "digit capsules"),
            ("labels", "(batch,) int array", "the true class of each image")],
    returns=Array(("batch", "out_caps·out_dim")),
    returns_dims="(batch, out_caps·out_dim): zeros except the label's capsule, slot j·out_dim + d",
    reference_name="capslib.Mask()(v, one-hot labels)",
    make_cases=_mask_label_cases, reference=_mask_reference, batch_args=(0, 1),
    mistakes=[
        Mistake("longest_not_label",
                "you kept the longest capsule. In training the decoder gets the capsule of the *true* class — "
                "that is what teaches each capsule to encode its own digit. (The check's labels are never the "
                "longest capsule.)",
                wrong=lambda v, labels: _mask_np(v, np.linalg.norm(v, axis=-1).argmax(-1))),
        Mistake("not_flattened",
                "right values, shape (batch, out_caps, out_dim): flatten to (batch, out_caps·out_dim) for the "
                "decoder's first Dense layer.",
                wrong=lambda v, labels: _mask_np(v, labels, flatten=False)),
        Mistake("only_selected_capsule",
                "you returned only the label's out_dim numbers. The decoder gets all out_caps × out_dim slots "
                "with zeros elsewhere: *where* the non-zeros are tells it which class it is drawing.",
                wrong=lambda v, labels: v[np.arange(v.shape[0]), labels]),
        Mistake("flattened_dims_first",
                "you flattened (batch, out_dim, out_caps): capslib (and the decoder's weights) read the numbers "
                "capsule by capsule — slot j·out_dim + d. Flatten (batch, out_caps, out_dim) directly.",
                wrong=lambda v, labels: _mask_np(v, labels, order="dj")),
        Mistake("scaled_by_the_label",
                "you multiplied v by the label *values* (3 for class 3): the labels are class indices. Turn them "
                "into a one-hot mask first — np.eye(out_caps)[labels] is (batch, out_caps).",
                wrong=lambda v, labels: (v * labels[:, None, None]).reshape(v.shape[0], -1)),
    ],
    task=("The cell above masked with one-hot labels. Datasets hand you **integer** labels, `labels` of shape "
          "`(batch,)` (e.g. `[3, 7]`). Write `my_mask_by_label(v, labels)`: keep only the capsule of each image's "
          "true class, zero the others, and flatten capsule by capsule, `(batch, out_caps, out_dim)` → "
          "`(batch, out_caps·out_dim)` — for any number of classes (the check uses 10 and 47)."),
    stub='''import numpy as np

def my_mask_by_label(v, labels):
    """v (batch, out_caps, out_dim), labels (batch,) ints -> (batch, out_caps*out_dim), only the label's capsule."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_mask_by_label(v, labels):
    """v (batch, out_caps, out_dim), labels (batch,) ints -> (batch, out_caps*out_dim), only the label's capsule."""
    keep = np.eye(v.shape[1], dtype=v.dtype)[labels]     # one-hot: (batch, out_caps)
    masked = v * keep[:, :, None]                         # a new array; v itself is untouched
    return masked.reshape(v.shape[0], -1)''',
    explanation=("`np.eye(n)[labels]` turns class indices into one-hot rows. Multiplying builds a new array; zeroing "
                 "the other capsules in place (`v[...] = 0`) would also zero the caller's `v`, which the routing "
                 "output still needs."),
    seed=63,
))


# =========================================================================== 6.4 masking by length, port layout


def _mask_length_cases(rng):
    out = []
    for b, d, j in ((1, 16, 10), (3, 16, 10), (7, 16, 10), (2, 8, 47)):
        v = (0.02 * rng.normal(size=(b, j, d))).astype("float32")
        alt = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
        for n in range(b):
            j_long, j_l1, j_peak, j_sum = rng.permutation(j)[:4]
            v[n, j_long] = 0.0
            v[n, j_long, rng.choice(d, 2, replace=False)] = -0.6               # longest, 0.85: two negative parts
            v[n, j_l1] = (0.8 if d == 16 else 0.79) / np.sqrt(d) * alt         # largest L1 norm, length 0.8
            v[n, j_peak] = 0.0
            v[n, j_peak, rng.integers(d)] = 0.7                                # largest component, |component|
            v[n, j_sum] = 0.12 if d == 16 else 0.15                            # largest sum
        out.append(Case((np.ascontiguousarray(v.transpose(0, 2, 1)),), batch=b))
    return out


def _mask_port_np(v_port, pick, layout="capslib", flatten=True):
    v = v_port.transpose(0, 2, 1)                                            # (batch, out_caps, out_dim)
    idx = pick(v)
    m = v * np.eye(v.shape[1], dtype=v.dtype)[idx][:, :, None]
    if layout == "port":
        m = m.transpose(0, 2, 1)
    return m.reshape(v.shape[0], -1) if flatten else m


check_mask_by_length = register(Exercise(
    id="6.4", slug="mask-by-length", title="Masking by the longest capsule, from the port's layout",
    chapter="06_losses_and_decoder", section="Masking: one capsule for the decoder", func="my_mask_by_length",
    checker="check_mask_by_length", signature="my_mask_by_length(v)",
    inputs=[("v", "(batch, out_dim, out_caps)", "the TF2 port's layout: one capsule per column")],
    returns=Array(("batch", "out_caps·out_dim")),
    returns_dims="(batch, out_caps·out_dim) in capslib's slot order j·out_dim + d: zeros except the longest capsule",
    reference_name="capslib.Mask()(v in capslib's layout)",
    make_cases=_mask_length_cases, reference=lambda v: np_(__import__("capslib").Mask()(v.transpose(0, 2, 1))),
    batch_args=(0,),
    mistakes=[
        Mistake("largest_l1",
                "you picked the capsule with the largest sum of |components| (an L1 norm). The prediction is the "
                "*longest* capsule, the Euclidean norm: two components of −0.6 make a longer capsule (0.85) than "
                "16 components of ±0.2 (0.8), though their L1 norms are 1.2 and 3.2.",
                wrong=lambda v: _mask_port_np(v, lambda c: np.abs(c).sum(-1).argmax(-1))),
        Mistake("largest_component",
                "you picked the capsule with the largest single component. The prediction is the longest "
                "capsule: argmax of the Euclidean lengths (components can be negative).",
                wrong={"argmax of the components": lambda v: _mask_port_np(v, lambda c: c.max(-1).argmax(-1)),
                       "argmax of |components|": lambda v: _mask_port_np(v, lambda c: np.abs(c).max(-1).argmax(-1))}),
        Mistake("largest_sum",
                "you picked the capsule whose components add up to the most; components can be negative. Use "
                "the length.",
                wrong=lambda v: _mask_port_np(v, lambda c: c.sum(-1).argmax(-1))),
        Mistake("shortest",
                "you kept the shortest capsule (argmin): the prediction is the longest one (argmax).",
                wrong=lambda v: _mask_port_np(v, lambda c: np.linalg.norm(c, axis=-1).argmin(-1))),
        Mistake("port_slot_order",
                "right capsule, but you flattened the port's (batch, out_dim, out_caps) directly, so capsule j's "
                "numbers land in slots d·out_caps + j. The decoder expects capslib's order, capsule by capsule, "
                "slot j·out_dim + d: transpose to (batch, out_caps, out_dim) before flattening.",
                wrong=lambda v: _mask_port_np(v, lambda c: np.linalg.norm(c, axis=-1).argmax(-1), layout="port")),
        Mistake("not_flattened",
                "right values, not flattened: return (batch, out_caps·out_dim).",
                wrong={"capslib's layout": lambda v: _mask_port_np(v, lambda c: np.linalg.norm(c, axis=-1).argmax(-1),
                                                                   flatten=False),
                       "the port's layout": lambda v: _mask_port_np(v, lambda c: np.linalg.norm(c, axis=-1).argmax(-1),
                                                                    layout="port", flatten=False)}),
    ],
    task=("At inference there is no label: the decoder gets the **longest** capsule. Write `my_mask_by_length(v)` "
          "for digit capsules in the TF2 port's layout, `(batch, out_dim, out_caps)` — one capsule per column, "
          "e.g. `(batch, 16, 10)` — that keeps the longest capsule, zeros the others, and returns them flattened "
          "in **capslib's** order (capsule by capsule, slot `j·out_dim + d`), "
          "`(batch, out_caps·out_dim)`, ready for capslib's decoder. Which axis do you take the lengths over? "
          "The check's longest capsule is never the one with the largest component, sum or L1 norm."),
    stub='''import numpy as np

def my_mask_by_length(v):
    """v (batch, out_dim, out_caps), capsules as columns -> (batch, out_caps*out_dim), capslib's slots, longest kept."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_mask_by_length(v):
    """v (batch, out_dim, out_caps), capsules as columns -> (batch, out_caps*out_dim), capslib's slots, longest kept."""
    caps = v.transpose(0, 2, 1)                            # capslib's layout (batch, out_caps, out_dim)
    lengths = np.linalg.norm(caps, axis=-1)                # (batch, out_caps)
    keep = np.eye(caps.shape[1])[lengths.argmax(axis=-1)]  # one-hot of the longest: (batch, out_caps)
    return (caps * keep[:, :, None]).reshape(v.shape[0], -1)''',
    explanation=("Two layouts meet here: the lengths run over the port's axis 1 (the dims of a column), and the "
                 "flattening must follow capslib's order, so transpose first. `reshape` after `transpose` copies "
                 "the numbers into the new order; flattening the port's array directly would interleave the "
                 "capsules."),
    transfer="the port's (batch, 16, 10) layout in, capslib's slot order out, longest by Euclidean length",
    seed=64,
))


# =========================================================================== 6.5 the decoder's sizes


def _decoder_reference(num_classes, capsule_dim, image_shape):
    import capslib
    n_in = capslib.Mask().compute_output_shape((None, num_classes, capsule_dim))[1]
    return (int(n_in), int(capslib.Decoder(image_shape).dense[-1].units))


_DECODER_ROWS = [(10, 16, (28, 28, 1)), (47, 16, (28, 28, 1)), (10, 16, (32, 32, 3)), (5, 8, (96, 96, 2)),
                 (10, 16, (40, 24, 1)), (3, 4, (7, 5, 3))]

check_decoder_sizes = register(Exercise(
    id="6.5", slug="decoder-sizes", title="A shape puzzle: the decoder's sizes", chapter="06_losses_and_decoder",
    section="The decoder: 160 → 512 → 1024 → 784", func="my_decoder_sizes", checker="check_decoder_sizes",
    signature="my_decoder_sizes(num_classes, capsule_dim, image_shape)",
    inputs=[("num_classes", "int", ""), ("capsule_dim", "int", ""),
            ("image_shape", "tuple (height, width, channels)", "")],
    returns=Tuple([Int(), Int()], "a `tuple` `(n_in, n_out)` of two ints"),
    returns_dims="the numbers the decoder reads, and the numbers its last Dense layer makes",
    reference_name="capslib.Mask and capslib.Decoder",
    make_cases=lambda rng: [Case(a, f"num_classes={a[0]}, capsule_dim={a[1]}, image_shape={a[2]}")
                            for a in _DECODER_ROWS],
    reference=_decoder_reference, twins=False,
    mistakes=[
        Mistake("one_capsule_only",
                "the decoder does not read one capsule: it reads the whole masked tensor, all num_classes × "
                "capsule_dim slots (zeros except one capsule), flattened.",
                wrong=lambda n, d, shape: (d, shape[0] * shape[1] * shape[2])),
        Mistake("forgot_channels",
                "the last layer makes every number of the image: height × width × channels (3 for colour, 2 for "
                "smallNORB's stereo pairs).",
                wrong=lambda n, d, shape: (n * d, shape[0] * shape[1])),
        Mistake("classes_only",
                "the decoder reads the masked capsules, num_classes × capsule_dim numbers, not one number per class.",
                wrong=lambda n, d, shape: (n, shape[0] * shape[1] * shape[2])),
        Mistake("square_assumed",
                "right for square images, wrong for 40×24: the image has height × width × channels numbers.",
                wrong=lambda n, d, shape: (n * d, shape[0] * shape[0] * shape[2])),
    ],
    task=("Write `my_decoder_sizes(num_classes, capsule_dim, image_shape)` returning `(n_in, n_out)`: how many "
          "numbers the decoder's first Dense layer reads, and how many its last Dense layer outputs (before the "
          "reshape to the image). MNIST gives `(160, 784)`; predict EMNIST's 47 classes, CIFAR-10's 32×32×3 "
          "images, smallNORB's 96×96×2 pairs and a 40×24 crop."),
    stub='''def my_decoder_sizes(num_classes, capsule_dim, image_shape):
    """-> (n_in, n_out), a tuple of ints. (10, 16, (28, 28, 1)) -> (160, 784)."""
    raise NotImplementedError''',
    solution='''def my_decoder_sizes(num_classes, capsule_dim, image_shape):
    """-> (n_in, n_out), a tuple of ints. (10, 16, (28, 28, 1)) -> (160, 784)."""
    height, width, channels = image_shape
    n_in = num_classes * capsule_dim          # the masked capsules, flattened
    n_out = height * width * channels         # one sigmoid per pixel value
    return (n_in, n_out)''',
    transfer="other class counts and image shapes (colour, stereo pairs, non-square)",
    seed=65,
))


# =========================================================================== 6.6 parameters of each layer


_LAYERS = ("conv1", "primary_caps", "digit_caps", "decoder")


@lru_cache(maxsize=None)
def _capsnet_counts(image_shape, conv_filters, primary_types, primary_dim, num_classes, digit_dim, digit_bias):
    import capslib
    m = capslib.CapsNet(input_shape=image_shape, num_classes=num_classes, routing_iterations=3,
                        use_bias=digit_bias, conv_filters=conv_filters, primary_types=primary_types,
                        primary_dim=primary_dim, digit_dim=digit_dim)
    return {name: int(getattr(m, name).count_params()) for name in _LAYERS}


def _counts_reference(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                      num_classes=10, digit_dim=16, digit_bias=False):
    return _capsnet_counts(tuple(image_shape), conv_filters, primary_types, primary_dim, num_classes, digit_dim,
                           bool(digit_bias))


def _counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8, num_classes=10,
            digit_dim=16, digit_bias=False, biases=True, classes_in_W=True, primary_c_in=True, decoder_in="all",
            positions=True, conv1_channels=True, image_for_caps=True, decoder_out="image", bias_counted=True):
    h, w, c = image_shape
    F, T, D, N, Dd = conv_filters, primary_types, primary_dim, num_classes, digit_dim
    if not image_for_caps:
        h, w = 28, 28

    def out(size, k, s):
        return (size - k) // s + 1
    grid = out(out(h, 9, 1), 9, 2) * out(out(w, 9, 1), 9, 2)
    in_caps = (grid if positions else 1) * T
    nb = 1 if biases else 0
    conv1 = 81 * (c if conv1_channels else 1) * F + nb * F
    primary = 81 * (F if primary_c_in else 1) * T * D + nb * T * D
    digit = in_caps * (N if classes_in_W else 1) * Dd * D + (N * Dd if digit_bias and bias_counted else 0)
    pixels = image_shape[0] * image_shape[1] * image_shape[2] if decoder_out == "image" else 784
    d_in = N * Dd if decoder_in == "all" else Dd
    decoder = d_in * 512 + 512 * 1024 + 1024 * pixels + nb * (512 + 1024 + pixels)
    return {"conv1": conv1, "primary_caps": primary, "digit_caps": digit, "decoder": decoder}


def _counts_with(**flags):
    def my_parameter_counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                            num_classes=10, digit_dim=16, digit_bias=False):
        return _counts(image_shape, conv_filters, primary_types, primary_dim, num_classes, digit_dim, digit_bias,
                       **flags)
    return my_parameter_counts


_COUNT_ROWS = [((28, 28, 1), 256, 32, 8, 10, 16, False), ((28, 28, 1), 256, 32, 8, 10, 16, True),
               ((32, 32, 3), 256, 32, 8, 10, 16, False), ((40, 24, 2), 64, 8, 4, 5, 6, True),
               ((20, 20, 1), 32, 4, 4, 3, 5, False), ((29, 31, 1), 256, 32, 8, 10, 16, False),
               ((33, 30, 3), 16, 2, 4, 4, 6, True)]


def _count_cases(rng):
    cases = [Case(a, "image_shape={}, conv_filters={}, primary_types={}, primary_dim={}, num_classes={}, "
                     "digit_dim={}, digit_bias={}".format(*a)) for a in _COUNT_ROWS]
    cases += [Case(((28, 28, 1), 256, 32, 8, 10, 16, False), "every argument left to its default", npass=0),
              Case(((32, 32, 3), 256, 32, 8, 10, 16, False), "image_shape=(32, 32, 3), the rest left to the defaults",
                   npass=1)]
    return cases


check_parameter_counts = register(Exercise(
    id="6.6", slug="parameter-counts", title="Counting the parameters of each layer, for any image",
    chapter="06_losses_and_decoder", section="The decoder: 160 → 512 → 1024 → 784", func="my_parameter_counts",
    checker="check_parameter_counts",
    signature=("my_parameter_counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8, "
               "num_classes=10, digit_dim=16, digit_bias=False)"),
    inputs=[("image_shape", "tuple (height, width, channels)", ""), ("conv_filters", "int", "conv1's filters"),
            ("primary_types", "int", "capsule types"), ("primary_dim", "int", "their dims"),
            ("num_classes", "int", "digit capsules"), ("digit_dim", "int", "their dims"),
            ("digit_bias", "bool", "DigitCaps' (num_classes, digit_dim) bias, as in the official code")],
    returns=Dict({k: Int() for k in _LAYERS},
                 "a `dict` of ints under the keys `\"conv1\"`, `\"primary_caps\"`, `\"digit_caps\"`, `\"decoder\"`"),
    returns_dims="the number of parameters of each layer",
    reference_name="count_params() of a capslib.CapsNet built with those sizes (use_bias=digit_bias)",
    make_cases=_count_cases, reference=_counts_reference, twins=False,
    mistakes=[
        Mistake("forgot_biases",
                "you left out the biases: every Conv2D filter and every Dense unit has one (a Conv2D has "
                "k·k·C_in·C_out + C_out parameters, a Dense n_in·n_out + n_out).",
                wrong=_counts_with(biases=False)),
        Mistake("W_without_classes",
                "your DigitCaps count lacks the classes: W holds one digit_dim × primary_dim matrix per (input i, "
                "output j) pair, in_caps × num_classes × digit_dim × primary_dim.",
                wrong=_counts_with(classes_in_W=False)),
        Mistake("conv_input_channels",
                "your primary_caps count ignores its input channels: each of its filters is 9 × 9 × C_in, and C_in "
                "is conv1's conv_filters.",
                wrong=_counts_with(primary_c_in=False)),
        Mistake("image_channels_ignored",
                "your conv1 count assumes one image channel: its filters are 9 × 9 × channels (3 for CIFAR-10).",
                wrong=_counts_with(conv1_channels=False)),
        Mistake("decoder_from_one_capsule",
                "your decoder starts from one capsule: it reads all num_classes × digit_dim masked numbers.",
                wrong=_counts_with(decoder_in="one")),
        Mistake("positions_forgotten",
                "your DigitCaps count uses primary_types input capsules: there are (positions) × primary_types of "
                "them — 6 × 6 × 32 = 1152 for 28×28 images.",
                wrong=_counts_with(positions=False)),
        Mistake("image_size_ignored",
                "your counts are those of 28×28 images whatever image_shape says: the number of primary "
                "capsules (and so W) and the decoder's output depend on the image size.",
                wrong={"capsules": _counts_with(image_for_caps=False),
                       "capsules and decoder": _counts_with(image_for_caps=False, decoder_out="784"),
                       "decoder": _counts_with(decoder_out="784")}),
        Mistake("digit_bias_ignored",
                "with digit_bias=True, DigitCaps also holds the official code's bias: one per output capsule "
                "dimension, num_classes × digit_dim numbers (+160 for the paper's sizes).",
                wrong=_counts_with(bias_counted=False)),
    ],
    task=("Write `my_parameter_counts(...)` returning the number of parameters of `conv1`, `primary_caps`, "
          "`digit_caps` and `decoder` for a CapsNet on images of `image_shape` (conv1 `conv_filters`@9×9; the "
          "primary conv `primary_types × primary_dim` filters of 9×9, stride 2; DigitCaps' `W`, plus the official "
          "code's `(num_classes, digit_dim)` bias when `digit_bias=True`, none otherwise; the decoder 512 → 1024 → "
          "height·width·channels). The check compares with real capslib layers built with `use_bias=digit_bias`: "
          "the paper's sizes, CIFAR-10 images, a small network, and every default."),
    stub='''def my_parameter_counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                        num_classes=10, digit_dim=16, digit_bias=False):
    """-> {"conv1": int, "primary_caps": int, "digit_caps": int, "decoder": int}."""
    raise NotImplementedError''',
    solution='''def my_parameter_counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                        num_classes=10, digit_dim=16, digit_bias=False):
    """-> {"conv1": int, "primary_caps": int, "digit_caps": int, "decoder": int}."""
    height, width, channels = image_shape
    def out(size, kernel, stride):
        return (size - kernel) // stride + 1
    def conv(c_in, c_out):
        return 9 * 9 * c_in * c_out + c_out               # weights + one bias per filter
    def dense(n_in, n_out):
        return n_in * n_out + n_out
    primary_filters = primary_types * primary_dim
    grid = out(out(height, 9, 1), 9, 2) * out(out(width, 9, 1), 9, 2)
    in_caps = grid * primary_types
    W = in_caps * num_classes * digit_dim * primary_dim
    pixels = height * width * channels
    return {
        "conv1": conv(channels, conv_filters),
        "primary_caps": conv(conv_filters, primary_filters),
        "digit_caps": W + (num_classes * digit_dim if digit_bias else 0),
        "decoder": dense(num_classes * digit_dim, 512) + dense(512, 1024) + dense(1024, pixels),
    }''',
    explanation=("For the paper's sizes: 20,992 + 5,308,672 + 1,474,560 + 1,411,344 = 8,215,568 (+160 with the "
                 "official bias). For CIFAR-10: conv1 62,464, W 2,621,440 and a decoder of 3,756,544 — the "
                 "primary conv is the same 5,308,672 whatever the image. Routing itself has no parameters."),
    transfer="other image shapes and the official bias: the counts of chapters 2–6 for a new network",
    seed=66,
))


# =========================================================================== 6.7 the reconstruction loss, flat


def _recon_cases(rng):
    def pair(b, h, w, c):
        return (rng.random((b, h, w, c)).astype("float32"), rng.random((b, h * w * c)).astype("float32"))

    return [
        Case(pair(1, 28, 28, 1) + (0.0005,), "images (1, 28, 28, 1), reconstructions (1, 784) (weight left to its "
                                             "default)", batch=1, npass=2),
        Case(pair(3, 28, 28, 1) + (0.0005,), "images (3, 28, 28, 1), reconstructions (3, 784), weight=0.0005", batch=3),
        Case(pair(7, 32, 32, 3) + (0.0005,), "images (7, 32, 32, 3), reconstructions (7, 3072), weight=0.0005",
             batch=7),
        Case(pair(2, 96, 96, 2) + (0.392,), "images (2, 96, 96, 2), reconstructions (2, 18432), weight=0.392", batch=2),
        Case(pair(4, 40, 24, 1) + (0.001,), "images (4, 40, 24, 1), reconstructions (4, 960), weight=0.001", batch=4),
    ]


def _recon_reference(images, reconstructions, weight=0.0005):
    import capslib
    return float(np_(capslib.reconstruction_loss(images, reconstructions.reshape(images.shape), weight)))


def _sse(x, r):
    return np.sum((x.reshape(x.shape[0], -1) - r) ** 2, axis=1)


check_reconstruction_loss = register(Exercise(
    id="6.7", slug="reconstruction-loss", title="A shape puzzle: the reconstruction loss from flat pixels",
    chapter="06_losses_and_decoder",
    section="The reconstruction loss, and why it is scaled down", func="my_reconstruction_loss",
    checker="check_reconstruction_loss", signature="my_reconstruction_loss(images, reconstructions, weight=0.0005)",
    inputs=[("images", "(batch, height, width, channels)", ""),
            ("reconstructions", "(batch, height·width·channels)", "the decoder's last Dense layer, not reshaped"),
            ("weight", "float", "the scale, 0.0005 in the paper")],
    returns=Number(), returns_dims="weight × the per-image sum of squared errors, averaged over the batch",
    reference_name="capslib.reconstruction_loss",
    make_cases=_recon_cases, reference=_recon_reference,
    mistakes=[
        Mistake("mean_over_pixels",
                "you averaged over the pixels (a mean squared error): the paper *sums* the squared errors of an "
                "image, then scales by the weight — that is why the weight is so small.",
                wrong=lambda x, r, w=0.0005: w * float(np.mean(_sse(x, r) / r.shape[1]))),
        Mistake("weight_missing",
                "the sum of squared errors is scaled by `weight` (0.0005) so that it does not drown the margin loss.",
                wrong=lambda x, r, w=0.0005: float(np.mean(_sse(x, r)))),
        Mistake("weight_ignored",
                "your loss is right for the default weight only: multiply by the `weight` argument, not by a "
                "constant 0.0005.",
                wrong=lambda x, r, w=0.0005: 0.0005 * float(np.mean(_sse(x, r)))),
        Mistake("summed_over_batch",
                "you summed over the batch as well: sum over each image's numbers, then average over the batch.",
                wrong=lambda x, r, w=0.0005: w * float(np.sum(_sse(x, r)))),
        Mistake("not_squared",
                "the errors are squared: (image − reconstruction)².",
                wrong=lambda x, r, w=0.0005: w * float(np.mean(np.sum(np.abs(x.reshape(x.shape[0], -1) - r), axis=1)))),
        Mistake("not_reshaped",
                "the two inputs have different shapes: images (batch, height, width, channels), reconstructions "
                "(batch, height·width·channels). Subtracting them directly broadcasts (or fails); reshape one to the "
                "other's shape first, e.g. images.reshape(len(images), -1).",
                error=r"could not be broadcast together with shapes \(\d+,\d+,\d+,\d+\) \(\d+,\d+\)|"
                      r"could not be broadcast together with shapes \(\d+,\d+\) \(\d+,\d+,\d+,\d+\)",
                example=lambda x, r, w=0.0005: w * float(np.mean(np.sum((x - r) ** 2, axis=(1, 2, 3))))),
    ],
    task=("The decoder's last Dense layer makes `(batch, height·width·channels)` numbers; capslib reshapes them to "
          "the image, but a loss can also work on them directly. Write `my_reconstruction_loss(images, "
          "reconstructions, weight=0.0005)`: for each image the **sum** of squared errors over all its numbers, "
          "averaged over the batch, times `weight` — with `images` `(batch, height, width, channels)` and the "
          "*flat* `reconstructions` `(batch, height·width·channels)`, for any image size (the check uses MNIST, "
          "CIFAR-10 and smallNORB shapes). Which axes do you reduce, and what must happen before you subtract?"),
    stub='''import numpy as np

def my_reconstruction_loss(images, reconstructions, weight=0.0005):
    """images (batch, h, w, c), reconstructions (batch, h*w*c) -> one number."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_reconstruction_loss(images, reconstructions, weight=0.0005):
    """images (batch, h, w, c), reconstructions (batch, h*w*c) -> one number."""
    flat = images.reshape(images.shape[0], -1)                      # (batch, h*w*c), the decoder's order
    per_image = np.sum((flat - reconstructions) ** 2, axis=1)       # (batch,)
    return weight * float(np.mean(per_image))''',
    explanation=("capslib's decoder reshapes its output with the same row-major order that `images.reshape(batch, "
                 "-1)` reads, so flattening the images lines every pixel up with its reconstruction. Subtracting "
                 "(3, 28, 28, 1) and (3, 784) directly fails; (1, 28, 28, 1) minus (1, 784) silently broadcasts to "
                 "(1, 28, 28, 784)."),
    transfer="flat reconstructions and any image shape: the shapes must be made to match first",
    seed=67,
))
