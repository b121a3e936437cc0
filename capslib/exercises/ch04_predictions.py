"""Chapter 4, predictions û: another W layout into capslib's out-major û, the memory of a tiled W
for any image size, broadcasting without einsum, and every shape of a CapsNet for other images."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._helpers import np_
from .ch03_primary_capsules import _pc_reference
from .framework import Array, Case, Dict, Exercise, Int, Mistake, ShapeTuple, register

_UHAT_DIMS = ("batch", "out_caps", "in_caps", "out_dim")


@lru_cache(maxsize=8)
def _digit_caps(in_caps, in_dim, out_caps, out_dim):
    import capslib
    layer = capslib.DigitCaps(num_caps=out_caps, dim=out_dim, use_bias=False, kernel_initializer="zeros",
                              name=f"exercise_digit_caps_{in_caps}_{in_dim}_{out_caps}_{out_dim}")
    layer.build((None, in_caps, in_dim))
    return layer


def _predictions_reference(u, W):
    """capslib.DigitCaps.predictions with this W (in_caps, out_caps, out_dim, in_dim): out-major û."""
    in_caps, out_caps, out_dim, in_dim = W.shape
    layer = _digit_caps(in_caps, in_dim, out_caps, out_dim)
    layer.W.assign(W)
    return np_(layer.predictions(u))


def _prediction_cases(rng, rows_layout):
    """u and W for several sizes; the memory pair (batch 2 and 10 at full size) last."""
    def W_of(i, j, d, e):
        W = (0.1 * rng.normal(size=(i, j, d, e))).astype("float32")
        return W.transpose(0, 1, 3, 2).copy() if rows_layout else W

    def u_of(b, i, e):
        return rng.uniform(-0.3, 0.3, (b, i, e)).astype("float32")

    W_full = W_of(1152, 10, 16, 8)
    W_small = W_of(72, 10, 16, 8)
    W_odd = W_of(30, 3, 4, 5)
    return [
        Case((u_of(1, 1152, 8), W_full), batch=1),
        Case((u_of(3, 72, 8), W_small), batch=3),
        Case((u_of(2, 30, 5), W_odd), "u (2, 30, 5), W for 3 output capsules of 4 dims (all sizes different)",
             batch=2),
        Case((u_of(2, 1152, 8), W_full), "u (2, 1152, 8), full-size W (memory measured)", batch=2, memory=True),
        Case((u_of(10, 1152, 8), W_full), "u (10, 1152, 8), full-size W (memory measured)", batch=10, memory=True),
    ]


def _tiled(run):
    """Does the peak memory grow by about one W per extra example? (tracemalloc sees NumPy's buffers.)"""
    pairs = {}
    for i, c in enumerate(run.cases):
        if c.memory:
            pairs.setdefault(c.twin_of is not None, []).append(i)
    for idx in pairs.values():
        small, big = min(idx, key=lambda k: run.cases[k].batch), max(idx, key=lambda k: run.cases[k].batch)
        W = run.args(big)[1]
        extra = run.cases[big].batch - run.cases[small].batch
        slope = (run.outcomes[big].peak - run.outcomes[small].peak) / extra
        if slope > 0.5 * W.nbytes:
            return {"slope": slope / 2**20, "W": W.nbytes / 2**20, "at128": 128 * W.nbytes / 2**20}
    return None


def _memory_note(run):
    idx = [i for i, c in enumerate(run.cases) if c.memory and c.twin_of is None]
    small, big = sorted(idx, key=lambda k: run.cases[k].batch)
    W = run.args(big)[1]
    slope = (run.outcomes[big].peak - run.outcomes[small].peak) / (run.cases[big].batch - run.cases[small].batch)
    return (f"Peak NumPy memory of your call: {run.outcomes[big].peak / 2**20:.1f} MiB at batch "
            f"{run.cases[big].batch}, {max(slope, 0) / 2**20:.2f} MiB more per extra example (a tiled W would add "
            f"{W.nbytes / 2**20:.1f} MiB per example).")


_TILED_HINT = ("right values, but each extra example made your function allocate {slope:.1f} MiB more — about one "
               "copy of W ({W:.1f} MiB): W is copied once per example. np.tile / np.repeat / "
               "broadcast_to(...).copy() do that, and so does an elementwise product of W with u summed afterwards "
               "(it builds a (batch, …, out_dim, in_dim) tensor). At batch 128 that is {at128:.0f} MiB per step. "
               "W is shared by the batch: {how}.")


def _tile_einsum(u, W_rows):
    Wt = np.tile(W_rows[None], (u.shape[0], 1, 1, 1, 1))
    return np.einsum("bijed,bie->bjid", Wt, u)


# =========================================================================== 4.1 another layout of W


check_predictions = register(Exercise(
    id="4.1", slug="predictions-einsum", title="û from a row-vector W, in capslib's layout", chapter="04_predictions",
    section="Three ways to compute every prediction at once", func="my_predictions", checker="check_predictions",
    signature="my_predictions(u, W_rows)",
    inputs=[("u", "(batch, in_caps, in_dim)", "batch, in_caps, in_dim"),
            ("W_rows", "(in_caps, out_caps, in_dim, out_dim)", "one in_dim × out_dim matrix per (i, j)")],
    returns=Array(_UHAT_DIMS, numpy_only=True),
    returns_dims="û in capslib's out-major layout (batch, out_caps, in_caps, out_dim)",
    reference_name="capslib.DigitCaps.predictions (with W = W_rows transposed)",
    make_cases=lambda rng: _prediction_cases(rng, rows_layout=True),
    reference=lambda u, W_rows: _predictions_reference(u, W_rows.transpose(0, 1, 3, 2)),
    batch_args=(0,), track_memory=True, numpy_only=True, on_correct=_memory_note,
    mistakes=[
        Mistake("W_tiled_to_batch", _TILED_HINT.replace("{how}", "contract the in_dim axis directly, "
                                                                 "np.einsum(\"bie,ijed->bjid\", u, W_rows)"),
                detect=_tiled, always=True, example=_tile_einsum),
        Mistake("paper_layout",
                "right numbers in the paper's layout (batch, in_caps, out_caps, out_dim); this exercise asks for "
                "capslib's out-major layout, j before i: (batch, out_caps, in_caps, out_dim), output subscripts "
                "\"bjid\".",
                wrong=lambda u, W: np.einsum("bie,ijed->bijd", u, W)),
        Mistake("out_dims_transposed",
                "your last two axes are (in_caps, out_caps) swapped with out_dim somewhere: û is one out_dim "
                "vector per (j, i), laid out (batch, out_caps, in_caps, out_dim).",
                wrong={"(batch, out_caps, out_dim, in_caps)": lambda u, W: np.einsum("bie,ijed->bjdi", u, W),
                       "(batch, in_caps, out_dim, out_caps)": lambda u, W: np.einsum("bie,ijed->bidj", u, W)}),
    ],
    task=("Code that multiplies *row* vectors, $\\hat u_{j|i} = u_i W_{ij}$, stores each matrix as in_dim × out_dim, "
          "so its weights are `W_rows` of shape `(in_caps, out_caps, in_dim, out_dim)` — the last two axes swapped "
          "compared with capslib's `W`. Write `my_predictions(u, W_rows)` that returns every prediction in "
          "**capslib's out-major layout** `(batch, out_caps, in_caps, out_dim)` (the layout of the next section, "
          "not the paper's of the cell above). Sizes vary: the check uses 1152, 72 and 30 input capsules, and 10 "
          "or 3 output capsules of 16 or 4 dims. NumPy only, and don't copy `W_rows` per example: the check "
          "measures the memory NumPy allocates at batch 2 and at batch 10."),
    stub='''import numpy as np

def my_predictions(u, W_rows):
    """u (batch, in_caps, in_dim), W_rows (in_caps, out_caps, in_dim, out_dim) -> (batch, out_caps, in_caps, out_dim)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_predictions(u, W_rows):
    """u (batch, in_caps, in_dim), W_rows (in_caps, out_caps, in_dim, out_dim) -> (batch, out_caps, in_caps, out_dim)."""
    # for every b, j, i, d: sum over e of u[b, i, e] * W_rows[i, j, e, d]
    return np.einsum("bie,ijed->bjid", u, W_rows)''',
    explanation=("Name the axes first — `b, i, e` for u and `i, j, e, d` for W_rows — and the einsum writes itself: "
                 "`e` is missing from the output, so it is summed; the output subscripts `bjid` are the layout. "
                 "Only the labels of W's last two axes change compared with the cell above."),
    transfer="W in another layout and û in capslib's out-major layout, for any sizes",
    seed=41,
))


# =========================================================================== 4.2 the memory of a tiled W, any image


def _in_caps(h, w):
    return _pc_reference(h, w)[0]


def _tiled_bytes_reference(batch, height=28, width=28, bytes_per_number=4):
    return batch * _in_caps(height, width) * 10 * 16 * 8 * bytes_per_number


def _caps(h, w, conv1=True, square=False):
    if square:
        w = h
    if conv1:
        h, w = h - 8, w - 8
    return ((h - 9) // 2 + 1) * ((w - 9) // 2 + 1) * 32


_BYTES_ROWS = [(7, 28, 28, 4), (128, 32, 32, 2), (512, 28, 28, 4), (33, 96, 96, 8), (64, 40, 24, 4),
               (3000, 28, 28, 2), (1, 17, 20, 4), (5, 30, 33, 4), (9, 29, 36, 2)]


def _bytes_cases(rng):
    cases = [Case(a, "batch={}, height={}, width={}, bytes_per_number={}".format(*a)) for a in _BYTES_ROWS]
    cases += [Case((1, 28, 28, 4), "batch=1 (height, width, bytes_per_number left to their defaults)", npass=1),
              Case((128, 28, 28, 4), "batch=128 (height, width, bytes_per_number left to their defaults)", npass=1),
              Case((16, 36, 28, 4), "batch=16, height=36 (width, bytes_per_number left to their defaults)", npass=2),
              Case((16, 36, 20, 4), "batch=16, height=36, width=20 (bytes_per_number left to its default)", npass=3)]
    return cases


def _int32(*factors):
    return int(np.prod(np.array(factors, dtype=np.int32), dtype=np.int32))


check_tiled_W_bytes = register(Exercise(
    id="4.2", slug="tiling-memory", title="The memory cost of tiling W, for any image", chapter="04_predictions",
    section="What tiling W to the batch costs", func="my_tiled_W_bytes", checker="check_tiled_W_bytes",
    signature="my_tiled_W_bytes(batch, height=28, width=28, bytes_per_number=4)",
    inputs=[("batch", "int", "examples per step"), ("height", "int", "image height"),
            ("width", "int", "image width"), ("bytes_per_number", "int", "4 for float32, 2 for float16/bfloat16")],
    returns=Int(), returns_dims="bytes of W tiled to (batch, in_caps, 10, 16, 8)",
    reference_name="in_caps from capslib.PrimaryCaps × W's 10·16·8 numbers per input capsule × batch × bytes",
    make_cases=_bytes_cases, reference=_tiled_bytes_reference, twins=False,
    mistakes=[
        Mistake("forgot_bytes",
                "you counted numbers, not bytes: multiply by bytes_per_number (4 for float32).",
                wrong=lambda b, h=28, w=28, n=4: b * _caps(h, w) * 1280),
        Mistake("forgot_batch",
                "that is W itself; tiling makes one copy per example, so multiply by the batch.",
                wrong=lambda b, h=28, w=28, n=4: _caps(h, w) * 1280 * n),
        Mistake("bits_not_bytes",
                "you counted bits: bytes_per_number is already in bytes.",
                wrong=lambda b, h=28, w=28, n=4: b * _caps(h, w) * 1280 * n * 8),
        Mistake("counted_u_hat",
                "that is the size of û (batch, in_caps, 10, 16), which every method must hold. The tiled W is "
                "(batch, in_caps, 10, 16, 8): 8 times more.",
                wrong=lambda b, h=28, w=28, n=4: b * _caps(h, w) * 160 * n),
        Mistake("W_without_classes",
                "your W has no out_caps axis: there is one 16×8 matrix for every (i, j) pair, "
                "in_caps × 10 × 16 × 8 numbers.",
                wrong=lambda b, h=28, w=28, n=4: b * _caps(h, w) * 128 * n),
        Mistake("image_size_ignored",
                "your answer is the one for 28×28 images whatever the size: the number of primary capsules, and "
                "with it W, depends on the image (exercise 3.4): 32×32 gives 2,048 capsules, 96×96 gives 51,200.",
                wrong=lambda b, h=28, w=28, n=4: b * 1152 * 1280 * n),
        Mistake("forgot_conv1",
                "your capsule count applies the primary conv to the image itself; conv1 (9×9, stride 1) comes "
                "first: 28 → 20 → 6.",
                wrong=lambda b, h=28, w=28, n=4: b * _caps(h, w, conv1=False) * 1280 * n),
        Mistake("square_assumed",
                "right for square images only: the capsule grid is (height − 8 − 9)//2 + 1 rows by "
                "(width − 8 − 9)//2 + 1 columns.",
                wrong=lambda b, h=28, w=28, n=4: b * _caps(h, w, square=True) * 1280 * n),
        Mistake("int32_overflow",
                "your count wrapped around: it was computed with 32-bit integers (np.int32, or an array of them), "
                "which stop at 2,147,483,647 — 2 GiB. Batch 512 of float32 W is 3 GB. Use Python ints (they never "
                "overflow) or int64.",
                wrong=lambda b, h=28, w=28, n=4: _int32(b, _caps(h, w), 10, 16, 8, n)),
    ],
    task=("Formulation (b), which some ports use (naturomics/CapsNet-Tensorflow among them), copies `W` once per example, to `(batch, in_caps, 10, 16, 8)`. Write "
          "`my_tiled_W_bytes(batch, height=28, width=28, bytes_per_number=4)`: how many **bytes** that tiled tensor "
          "takes for a CapsNet on `height`×`width` images (conv1 256@9×9, the primary conv 256@9×9 stride 2 read "
          "as 32 types × 8 dims, 10 digit capsules of 16 dims). How many GiB (÷ 2**30) is that for CIFAR-10 "
          "(32×32) and smallNORB (96×96) at batch 128 — would it fit on your GPU?"),
    stub='''def my_tiled_W_bytes(batch, height=28, width=28, bytes_per_number=4):
    """Bytes of W tiled to (batch, in_caps, 10, 16, 8) for height x width images. ints in, int out."""
    raise NotImplementedError''',
    solution='''def my_tiled_W_bytes(batch, height=28, width=28, bytes_per_number=4):
    """Bytes of W tiled to (batch, in_caps, 10, 16, 8) for height x width images. ints in, int out."""
    def out(size, kernel, stride):
        return (size - kernel) // stride + 1
    rows = out(out(height, 9, 1), 9, 2)         # conv1, then the primary conv
    cols = out(out(width, 9, 1), 9, 2)
    in_caps = rows * cols * 32                  # 32 capsule types per position
    numbers_in_W = in_caps * 10 * 16 * 8        # one 16x8 matrix per (i, j)
    return batch * numbers_in_W * bytes_per_number     # Python ints: no overflow

for name, size in (("CIFAR-10", 32), ("smallNORB", 96)):
    print(f"{name}, batch 128: {my_tiled_W_bytes(128, size, size) / 2**30:.1f} GiB")''',
    explanation=("At batch 128 in float32: 0.7 GiB for MNIST, 1.25 GiB for CIFAR-10's 2,048 capsules, 31 GiB for "
                 "smallNORB's 51,200 — for copies of numbers we already had, before the backward pass doubles them. "
                 "Python's ints are exact at any size; `np.prod` of an int32 array wraps around past 2³¹."),
    transfer="a CapsNet for other image sizes: in_caps from two conv sizes, then W, batch and precision",
    seed=42,
))


# =========================================================================== 4.3 broadcasting, no einsum


check_predictions_broadcast = register(Exercise(
    id="4.3", slug="broadcasting-not-tiling", title="Broadcasting, in capslib's layout", chapter="04_predictions",
    section="Measured on this machine",
    func="my_predictions_broadcast", checker="check_predictions_broadcast",
    signature="my_predictions_broadcast(u, W)",
    inputs=[("u", "(batch, in_caps, in_dim)", "batch, in_caps, in_dim"),
            ("W", "(in_caps, out_caps, out_dim, in_dim)", "capslib's W")],
    returns=Array(_UHAT_DIMS, numpy_only=True),
    returns_dims="û in capslib's out-major layout (batch, out_caps, in_caps, out_dim)",
    reference_name="capslib.DigitCaps.predictions",
    make_cases=lambda rng: _prediction_cases(rng, rows_layout=False), reference=_predictions_reference,
    batch_args=(0,), track_memory=True, numpy_only=True, on_correct=_memory_note,
    no_loops=("This exercise is about broadcasting: one `@` on views of u and W with size-1 axes computes every "
              "(example, output capsule, input capsule) at once. Drop the loop (and any tensordot or @ per "
              "capsule): put W's out_caps axis first with transpose, then W[None] @ u[:, None, :, :, None]."),
    forbid=(("einsum|c_einsum", "einsum_used",
             "your function calls einsum; this exercise is about doing without it: insert size-1 axes so that "
             "`@` (np.matmul) broadcasts W's (out_dim, in_dim) matrices against u's in_dim columns."),),
    mistakes=[
        Mistake("W_tiled_to_batch",
                _TILED_HINT.replace("{how}", "let `@` broadcast a size-1 batch axis of W against the batch of u "
                                             "without copying"),
                detect=_tiled, always=True,
                example=lambda u, W: (np.tile(W.transpose(1, 0, 2, 3)[None], (u.shape[0], 1, 1, 1, 1))
                                      @ u[:, None, :, :, None])[..., 0]),
        Mistake("not_squeezed",
                "almost: your result ends in an extra axis of size 1 — matmul's (out_dim, in_dim) @ (in_dim, 1) "
                "leaves a column axis. Drop it: [..., 0] or np.squeeze(x, axis=-1).",
                wrong=lambda u, W: W.transpose(1, 0, 2, 3)[None] @ u[:, None, :, :, None]),
        Mistake("paper_layout",
                "right numbers in the paper's layout (batch, in_caps, out_caps, out_dim), the one of the cell above. "
                "This exercise asks for capslib's (batch, out_caps, in_caps, out_dim): put W's out_caps axis "
                "first before you broadcast (W.transpose(1, 0, 2, 3), a view: no copy).",
                wrong=lambda u, W: (W[None] @ u[:, :, None, :, None])[..., 0]),
        Mistake("missing_axes",
                "the axes do not line up for matmul. It multiplies the last two axes — W's (out_dim, in_dim) by an "
                "(in_dim, 1) column — and broadcasts the others aligned from the right, so u needs a size-1 axis "
                "where W has out_caps, and a column axis at the end.",
                error=r"matmul|core dimension|remapped shapes",
                example=lambda u, W: (W.transpose(1, 0, 2, 3)[None] @ u[:, None, :, :])[..., 0]),
    ],
    task=("Compute û in **capslib's out-major layout** `(batch, out_caps, in_caps, out_dim)` from capslib's `W` "
          "`(in_caps, out_caps, out_dim, in_dim)` by broadcasting: reorder `W`'s axes with a view and insert "
          "size-1 axes so that one `@` computes every prediction at once. Cell (c) above did it for the paper's "
          "layout; here the output capsules come first. Sizes vary as in exercise 4.1. The check refuses any "
          "einsum, a copy of `W` per example (it measures NumPy's memory at batch 2 and 10) and a Python loop "
          "over the examples or the capsules — a tensordot or `@` per capsule included (it counts the lines of "
          "your code that run: they must not grow with the sizes)."),
    stub='''import numpy as np

def my_predictions_broadcast(u, W):
    """u (batch, in_caps, in_dim), W (in_caps, out_caps, out_dim, in_dim) -> (batch, out_caps, in_caps, out_dim)."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_predictions_broadcast(u, W):
    """u (batch, in_caps, in_dim), W (in_caps, out_caps, out_dim, in_dim) -> (batch, out_caps, in_caps, out_dim)."""
    W_j = W.transpose(1, 0, 2, 3)[None]        # (1,     out_caps, in_caps, out_dim, in_dim): a view
    u_col = u[:, None, :, :, None]             # (batch, 1,        in_caps, in_dim,  1)     a column per (b, i)
    return (W_j @ u_col)[..., 0]               # (batch, out_caps, in_caps, out_dim, 1) -> drop the 1''',
    explanation=("`transpose` and `[None]` make views, not copies. `@` multiplies the last two axes and broadcasts the "
                 "rest aligned from the right: W's size-1 batch axis meets u's batch, u's size-1 out_caps axis meets "
                 "W's out_caps, and in_caps matches in_caps. Compare the peak memory the check prints with a tiled W."),
    transfer="the other layout: the student must place the size-1 axes for out-major û, without einsum",
    seed=43,
))


# =========================================================================== 4.4 every shape of a CapsNet


_SHAPE_KEYS = ("conv1", "primary_conv", "u", "W", "u_hat", "v", "masked", "reconstructions")


def _capsnet_shapes_reference(batch, height, width, channels, num_classes=10):
    """capslib's layers' compute_output_shape; W and û from a DigitCaps built with 2 input capsules
    (its layouts), with the real in_caps put in (building the real one could allocate GBs)."""
    import keras

    import capslib
    conv1 = tuple(keras.layers.Conv2D(256, 9).compute_output_shape((batch, height, width, channels)))
    pc = capslib.PrimaryCaps(num_types=32, dim=8)
    primary_conv = tuple(pc.conv.compute_output_shape(conv1))
    u = tuple(pc.compute_output_shape(conv1))
    in_caps = u[1]
    small = capslib.DigitCaps(num_caps=num_classes, dim=16, use_bias=False)
    small.build((None, 2, 8))
    W = (in_caps,) + tuple(small.W.shape)[1:]
    u_hat_small = tuple(small.predictions(keras.KerasTensor((batch, 2, 8))).shape)
    u_hat = u_hat_small[:2] + (in_caps,) + u_hat_small[3:]
    v = tuple(small.compute_output_shape(u))
    masked = tuple(capslib.Mask().compute_output_shape(v))
    recon = tuple(capslib.Decoder((height, width, channels)).compute_output_shape(masked))
    out = dict(zip(_SHAPE_KEYS, (conv1, primary_conv, u, W, u_hat, v, masked, recon)))
    return {k: tuple(int(d) for d in s) for k, s in out.items()}


def _shapes(b, h, w, c, n=10, conv1=True, plus_one=True, square=False, u_hat="out", W="capslib",
            recon="image", masked="all"):
    def out(size, k, s):
        return (size - k) // s + (1 if plus_one else 0)
    if square:
        w = h
    h1, w1 = (out(h, 9, 1), out(w, 9, 1)) if conv1 else (h, w)
    h2, w2 = out(h1, 9, 2), out(w1, 9, 2)
    ic = h2 * w2 * 32
    return {"conv1": (b, h1, w1, 256), "primary_conv": (b, h2, w2, 256), "u": (b, ic, 8),
            "W": {"capslib": (ic, n, 16, 8), "rows": (ic, n, 8, 16), "batch": (b, ic, n, 16, 8)}[W],
            "u_hat": (b, n, ic, 16) if u_hat == "out" else (b, ic, n, 16),
            "v": (b, n, 16), "masked": (b, n * 16) if masked == "all" else (b, 16),
            "reconstructions": (b, h, w, c) if recon == "image" else (b, h * w * c)}


_SHAPE_ROWS = [(1, 28, 28, 1, 10), (128, 32, 32, 3, 10), (16, 96, 96, 2, 5), (5, 40, 24, 1, 10),
               (7, 28, 28, 1, 47), (3, 29, 31, 1, 10), (2, 36, 33, 3, 10)]


def _shape_cases(rng):
    cases = [Case(a, "batch={}, height={}, width={}, channels={}, num_classes={}".format(*a)) for a in _SHAPE_ROWS]
    cases.append(Case((3, 28, 28, 1, 10), "batch=3, height=28, width=28, channels=1 (num_classes left to its default)",
                      npass=4))
    return cases


check_capsnet_shapes = register(Exercise(
    id="4.4", slug="capsnet-shapes", title="A shape puzzle: every shape of a CapsNet for other images",
    chapter="04_predictions", section="How long each takes (one small batch)", func="my_capsnet_shapes",
    checker="check_capsnet_shapes", aliases=("check_digit_caps_shapes",),
    signature="my_capsnet_shapes(batch, height, width, channels, num_classes=10)",
    inputs=[("batch", "int", ""), ("height", "int", ""), ("width", "int", ""), ("channels", "int", ""),
            ("num_classes", "int", "digit capsules")],
    returns=Dict({k: ShapeTuple() for k in _SHAPE_KEYS},
                 "a `dict` whose values are shapes, `tuple`s of ints, under the keys "
                 + ", ".join(f"`\"{k}\"`" for k in _SHAPE_KEYS)),
    returns_dims="the shape of each tensor, in capslib's layouts",
    reference_name="capslib's layers (compute_output_shape, DigitCaps' W and predictions layouts)",
    make_cases=_shape_cases, reference=_capsnet_shapes_reference, twins=False,
    mistakes=[
        Mistake("u_hat_paper_layout",
                "your û is in the paper's layout (batch, in_caps, out_caps, out_dim). capslib's "
                "DigitCaps.predictions is out-major: (batch, out_caps, in_caps, out_dim).",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, u_hat="paper")),
        Mistake("W_dims_swapped",
                "your W ends (in_dim, out_dim). W_ij turns the column u_i (8 numbers) into û_j|i (16), so as a "
                "matrix it is 16 rows × 8 columns: W is (in_caps, out_caps, 16, 8).",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, W="rows")),
        Mistake("W_with_batch",
                "your W has a batch axis. W is a weight shared by every example: (in_caps, out_caps, 16, 8), no "
                "batch (a batch axis is what tiling would add).",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, W="batch")),
        Mistake("forgot_conv1",
                "your primary capsules come from the image itself: conv1 (9×9, stride 1) comes first, "
                "28 → 20 → 6.",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, conv1=False)),
        Mistake("no_plus_one",
                "your conv sizes lack the + 1 of the output-size rule: out = (in − k) // s + 1.",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, plus_one=False)),
        Mistake("square_assumed",
                "right for square images, wrong for 40×24: rows come from the height, columns from the width.",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, square=True)),
        Mistake("flat_reconstructions",
                "your reconstructions are the decoder's last Dense output, (batch, height·width·channels); "
                "capslib's Decoder reshapes them to the image, (batch, height, width, channels).",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, recon="flat")),
        Mistake("masked_one_capsule",
                "masking keeps all num_classes × 16 slots (zeros except one capsule): masked is "
                "(batch, num_classes·16), not (batch, 16).",
                wrong=lambda b, h, w, c, n=10: _shapes(b, h, w, c, n, masked="one")),
    ],
    task=("Predict every shape of a CapsNet for other images, before running anything: write "
          "`my_capsnet_shapes(batch, height, width, channels, num_classes=10)` returning a dict with the shapes of "
          "`conv1` (the 256@9×9 conv's output), `primary_conv`, the primary capsules `u`, DigitCaps' `W`, the "
          "predictions `u_hat` in capslib's out-major layout, the digit capsules `v`, the decoder's input `masked` "
          "and its output `reconstructions`, for 16 digit dims and 32 × 8-D primary capsule types, as capslib "
          "builds them. Try CIFAR-10 `(128, 32, 32, 3)` and smallNORB pairs `(16, 96, 96, 2, 5)`."),
    stub='''def my_capsnet_shapes(batch, height, width, channels, num_classes=10):
    """-> {"conv1": (...), "primary_conv": ..., "u": ..., "W": ..., "u_hat": ..., "v": ..., "masked": ...,
           "reconstructions": ...}: each a tuple of ints, capslib's layouts."""
    raise NotImplementedError''',
    solution='''def my_capsnet_shapes(batch, height, width, channels, num_classes=10):
    """-> {"conv1": (...), "primary_conv": ..., "u": ..., "W": ..., "u_hat": ..., "v": ..., "masked": ...,
           "reconstructions": ...}: each a tuple of ints, capslib's layouts."""
    def out(size, kernel, stride):
        return (size - kernel) // stride + 1
    h1, w1 = out(height, 9, 1), out(width, 9, 1)          # conv1
    h2, w2 = out(h1, 9, 2), out(w1, 9, 2)                 # the primary conv
    in_caps = h2 * w2 * 32
    return {
        "conv1": (batch, h1, w1, 256),
        "primary_conv": (batch, h2, w2, 256),
        "u": (batch, in_caps, 8),
        "W": (in_caps, num_classes, 16, 8),               # no batch: shared by every example
        "u_hat": (batch, num_classes, in_caps, 16),       # out-major: j before i
        "v": (batch, num_classes, 16),
        "masked": (batch, num_classes * 16),
        "reconstructions": (batch, height, width, channels),
    }''',
    explanation=("CIFAR-10 at batch 128: conv1 (128, 24, 24, 256), 8×8 positions, 2,048 primary capsules, W "
                 "(2048, 10, 16, 8) — 2.6 M numbers — and û (128, 10, 2048, 16). Full-size smallNORB pairs, 96×96, "
                 "give 51,200 capsules: W alone is 32.8 M numbers for its 5 classes, 22 times MNIST's."),
    transfer="predicting every shape for CIFAR-10, smallNORB and non-square images, across chapters 2–6",
    seed=44,
))
