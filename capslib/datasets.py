"""Generated test sets for the paper's robustness experiments, and a CapsNet for two digits.

Two experiments of Sabour, Frosst & Hinton (2017) need data that cannot be downloaded here, so
capslib makes it from MNIST digits, seeded and reproducible (pure NumPy, any backend):

======================  =====================================================  ==========================
function                makes                                                  shapes
======================  =====================================================  ==========================
``pad_to_canvas``       digits placed on a larger black canvas (centred, or    ``(n, 40, 40, 1)``
                        at a random integer offset: the paper's 40×40
                        "padded and translated MNIST" training set)
``affine_transform``    digits under given affine transforms (rotation,        ``(n, 40, 40, 1)``
                        shear, scale, integer translation), bilinear sampling
``affine_mnist``        a random affine test set in the manner of affNIST      ``(n, 40, 40, 1)`` + labels
``multi_mnist``         MultiMNIST: two digits of different classes, each      ``(n, 36, 36, 1)``, two-hot
                        shifted up to ±4 px, overlaid on a 36×36 canvas        ``(n, 10)``, digits
                                                                               ``(n, 2, 36, 36, 1)``
======================  =====================================================  ==========================

and :class:`MultiDigitCapsNet`, a :class:`capslib.CapsNet` whose loss is the paper's MultiMNIST
loss: the margin loss with *two* present classes, plus the reconstruction of *each* digit from
its own capsule (the other nine masked).

Every image is float32 in [0, 1]. Every generator takes a ``seed``: the same seed gives the
same arrays, bit for bit, on every machine (``numpy.random.default_rng``).

The affine transform
--------------------
Pixel coordinates are ``(x, y)`` = (column, row), rows pointing *down*, measured from the
centre of the image. A source digit ``(H, W)`` is mapped onto the canvas by

    p_canvas = A (p_digit − c_digit) + c_canvas + t,      A = R(θ) · Sh(k) · S(s_x, s_y)

with ``S = diag(s_x, s_y)`` (scale each axis), ``Sh = [[1, k], [0, 1]]`` (horizontal shear:
x moves by k·y), ``R(θ) = [[cos θ, sin θ], [−sin θ, cos θ]]`` (θ > 0 turns the digit
*anticlockwise* as it appears on screen; θ = 90° is ``np.rot90``), ``c`` the centres
``((W−1)/2, (H−1)/2)``, and ``t`` an integer translation. Each canvas pixel reads the source at
``A⁻¹ (p_canvas − c_canvas − t) + c_digit`` by bilinear interpolation, zero outside the digit.
With θ = 0, k = 0, s = 1, t = 0 a 28×28 digit lands exactly (no interpolation) in the middle of
a 40×40 canvas: the 6-pixel border of :func:`pad_to_canvas`.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np

from .losses import margin_loss, reconstruction_loss
from .model import CapsNet
from .ops import capsule_length
from .shapes import ShapeError

__all__ = ["pad_to_canvas", "affine_matrix", "affine_transform", "affine_mnist", "AffineMNIST",
           "multi_mnist", "MultiMNIST", "MultiDigitCapsNet", "two_digit_accuracy"]


# --------------------------------------------------------------------------- validation


def _fail(function: str, tensor: str, message: str):
    raise ShapeError(f"ShapeError in {function} ({tensor}): {message}")


def _images(x, function: str) -> np.ndarray:
    """``(n, H, W)`` or ``(n, H, W, 1)`` floats in [0, 1] → float32 ``(n, H, W)``."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        _fail(function, "images", f"expected numeric pixels, got dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        _fail(function, "images", f"expected (n, height, width, 1) or (n, height, width), got {x.shape}")
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        _fail(function, "images", f"expected at least one non-empty image, got {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        _fail(function, "images", "pixels must be finite; found NaN/inf")
    if x.min() < 0.0 or x.max() > 1.0:
        _fail(function, "images", f"pixels must be in [0, 1] (capslib.data.scale_images), got "
                                  f"[{x.min():g}, {x.max():g}]")
    return x


def _labels(y, n: int, function: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        _fail(function, "labels", f"expected integer labels (n,), got {y.shape}"
                                  + (" — these look one-hot; pass labels.argmax(-1)" if y.ndim == 2 else ""))
    if len(y) != n:
        _fail(function, "labels", f"{len(y)} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
            _fail(function, "labels", f"expected whole-number labels 0–9, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() > 9:
        _fail(function, "labels", f"labels must be in 0–9, got {y.min()}–{y.max()}")
    return y


# --------------------------------------------------------------------------- canvas


def pad_to_canvas(images, canvas: int = 40, max_shift: int = 0, seed=None) -> np.ndarray:
    """Put each ``(H, W)`` digit on a black ``canvas × canvas`` image, at the centre or shifted.

    images: ``(n, H, W, 1)`` or ``(n, H, W)`` in [0, 1], e.g. MNIST ``(n, 28, 28, 1)``.
    max_shift: 0 → every digit exactly centred (a 6-pixel border for 28 → 40). k > 0 → each
    digit moved by its own integer ``(dy, dx)``, drawn uniformly from ``−k…k``; k may be at most
    ``(canvas − H) // 2`` so no digit is cut. ``max_shift=6`` with 28 → 40 is every placement that
    fits: the paper's "MNIST digit placed randomly on a black background of 40×40 pixels".
    seed: int for the random offsets (required when max_shift > 0).
    Returns float32 ``(n, canvas, canvas, 1)``; pixels are copied, never interpolated.
    """
    x = _images(images, "pad_to_canvas")
    n, h, w = x.shape
    if canvas < max(h, w):
        _fail("pad_to_canvas", "canvas", f"canvas {canvas} is smaller than the images ({h}×{w})")
    top0, left0 = (canvas - h) // 2, (canvas - w) // 2
    room = min(top0, left0, canvas - h - top0, canvas - w - left0)
    if not 0 <= int(max_shift) <= room:
        raise ValueError(f"pad_to_canvas: max_shift must be in 0–{room} for {h}×{w} digits on a "
                         f"{canvas}×{canvas} canvas, got {max_shift}")
    if max_shift and seed is None:
        raise ValueError("pad_to_canvas: pass a seed with max_shift > 0 (reproducible placements)")
    shifts = (np.random.default_rng(seed).integers(-max_shift, max_shift + 1, size=(n, 2))
              if max_shift else np.zeros((n, 2), np.int64))
    out = np.zeros((n, canvas, canvas), np.float32)
    for k, (dy, dx) in enumerate(shifts):
        out[k, top0 + dy:top0 + dy + h, left0 + dx:left0 + dx + w] = x[k]
    return out[..., None]


# --------------------------------------------------------------------------- affine


def affine_matrix(rotation_deg=0.0, shear=0.0, scale_x=1.0, scale_y=1.0) -> np.ndarray:
    """``A = R(θ) · Sh(k) · S(s_x, s_y)`` acting on ``(x, y)`` = (column, row-down) coordinates.

    Scalars give ``(2, 2)``; arrays of length n give ``(n, 2, 2)``. θ in degrees, θ > 0 turns
    anticlockwise on screen. See the module docstring for each factor.
    """
    th = np.deg2rad(np.asarray(rotation_deg, np.float64))
    k, sx, sy = (np.asarray(a, np.float64) for a in (shear, scale_x, scale_y))
    th, k, sx, sy = np.broadcast_arrays(th, k, sx, sy)
    c, s = np.cos(th), np.sin(th)
    rot = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)          # (…, 2, 2)
    shr = np.stack([np.stack([np.ones_like(k), k], -1), np.stack([np.zeros_like(k), np.ones_like(k)], -1)], -2)
    scl = np.stack([np.stack([sx, np.zeros_like(sx)], -1), np.stack([np.zeros_like(sy), sy], -1)], -2)
    return rot @ shr @ scl


def _bilinear(src, xs, ys):
    """Sample src ``(n, H, W)`` at float coords xs, ys ``(n, h, w)``; zero outside."""
    n, h, w = src.shape
    pad = np.zeros((n, h + 2, w + 2), np.float64)        # a zero border: reads outside give 0
    pad[:, 1:-1, 1:-1] = src
    xs = np.clip(xs + 1.0, 0.0, w + 1.0)                  # in padded coords, clipped onto the border
    ys = np.clip(ys + 1.0, 0.0, h + 1.0)
    x0 = np.minimum(np.floor(xs).astype(np.int64), w)     # x0 + 1 ≤ w + 1 stays in range
    y0 = np.minimum(np.floor(ys).astype(np.int64), h)
    fx, fy = xs - x0, ys - y0
    b = np.arange(n)[:, None, None]
    top = pad[b, y0, x0] * (1 - fx) + pad[b, y0, x0 + 1] * fx
    bottom = pad[b, y0 + 1, x0] * (1 - fx) + pad[b, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def affine_transform(images, rotation_deg=0.0, shear=0.0, scale_x=1.0, scale_y=1.0,
                     shift_y=0, shift_x=0, canvas: int = 40) -> np.ndarray:
    """Draw each digit on a ``canvas × canvas`` image under its own affine transform.

    images: ``(n, H, W, 1)`` or ``(n, H, W)`` in [0, 1]. rotation_deg, shear, scale_x, scale_y:
    scalars or ``(n,)`` arrays (see the module docstring for A = R·Sh·S). shift_y, shift_x:
    integer translations in pixels (down, right). Returns float32 ``(n, canvas, canvas, 1)`` in
    [0, 1]. Deterministic: no randomness here (see :func:`affine_mnist` for random transforms).
    """
    x = _images(images, "affine_transform")
    n, h, w = x.shape
    params = [np.broadcast_to(np.asarray(p, np.float64), (n,)) if np.ndim(p) == 0 else np.asarray(p, np.float64)
              for p in (rotation_deg, shear, scale_x, scale_y, shift_y, shift_x)]
    for name, p in zip(("rotation_deg", "shear", "scale_x", "scale_y", "shift_y", "shift_x"), params):
        if p.shape != (n,):
            _fail("affine_transform", name, f"expected a scalar or ({n},), got {p.shape}")
    rot, shr, sx, sy, ty, tx = params
    if np.any(sx <= 0) or np.any(sy <= 0):
        raise ValueError("affine_transform: scales must be > 0")
    if np.any(ty != np.round(ty)) or np.any(tx != np.round(tx)):
        raise ValueError("affine_transform: shift_y and shift_x must be whole pixels")
    inv = np.linalg.inv(affine_matrix(rot, shr, sx, sy))                       # (n, 2, 2)
    cc = (canvas - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(canvas, dtype=np.float64), np.arange(canvas, dtype=np.float64),
                             indexing="ij")
    out = np.empty((n, canvas, canvas, 1), np.float32)
    for start in range(0, n, 1024):                     # in chunks: bounded memory for 60,000 digits
        sl = slice(start, start + 1024)
        px = cols[None] - cc - tx[sl, None, None]                               # (chunk, canvas, canvas)
        py = rows[None] - cc - ty[sl, None, None]
        src_x = inv[sl, 0, 0, None, None] * px + inv[sl, 0, 1, None, None] * py + (w - 1) / 2.0
        src_y = inv[sl, 1, 0, None, None] * px + inv[sl, 1, 1, None, None] * py + (h - 1) / 2.0
        # Snap coordinates that are whole numbers up to float error, so exact cases (identity, 90°) stay exact.
        src_x = np.where(np.abs(src_x - np.round(src_x)) < 1e-9, np.round(src_x), src_x)
        src_y = np.where(np.abs(src_y - np.round(src_y)) < 1e-9, np.round(src_y), src_y)
        out[sl, ..., 0] = np.clip(_bilinear(x[sl].astype(np.float64), src_x, src_y), 0.0, 1.0)
    return out


class AffineMNIST(NamedTuple):
    """A generated affine test set: images ``(n, canvas, canvas, 1)``, labels ``(n,)`` and the
    transform of each image (``params``: dict of ``(n,)`` arrays)."""

    images: np.ndarray
    labels: np.ndarray
    params: dict
    description: str


def affine_mnist(images, labels, seed, canvas: int = 40, max_rotation: float = 20.0, max_shear: float = 0.2,
                 scale_range=(0.8, 1.2), max_translation=None) -> AffineMNIST:
    """A random affine test set in the manner of affNIST, from MNIST digits.

    Each digit gets its own transform, drawn independently and uniformly:

    - rotation θ ~ U(−max_rotation, +max_rotation) degrees (default ±20°);
    - horizontal shear k ~ U(−max_shear, +max_shear) (default ±0.2: x moves by k·y);
    - scale s_x, s_y ~ U(scale_range), independently per axis (default 0.8–1.2);
    - translation: the transformed digit is first drawn at the centre; then an integer shift
      (dy, dx) is drawn uniformly from every shift that keeps the digit's bounding box (pixels
      > 0) inside the canvas — or, with ``max_translation=k``, from those with |dy|, |dx| ≤ k.

    images: ``(n, 28, 28, 1)`` in [0, 1]; labels: ``(n,)`` integers; seed: int.
    Returns :class:`AffineMNIST` ``(images (n, canvas, canvas, 1), labels (n,), params, description)``.
    """
    x = _images(images, "affine_mnist")
    y = _labels(labels, len(x), "affine_mnist")
    lo, hi = (float(s) for s in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"affine_mnist: scale_range must be 0 < low ≤ high, got {scale_range}")
    n = len(x)
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-max_rotation, max_rotation, n)
    shr = rng.uniform(-max_shear, max_shear, n)
    sx, sy = rng.uniform(lo, hi, n), rng.uniform(lo, hi, n)
    centred = affine_transform(x, rot, shr, sx, sy, 0, 0, canvas)[..., 0]       # (n, canvas, canvas)
    u = rng.uniform(size=(n, 2))                                                # for the shifts
    ty, tx = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for k in range(n):
        rows, cols = np.flatnonzero(centred[k].any(1)), np.flatnonzero(centred[k].any(0))
        if rows.size == 0:
            continue                                                           # a blank digit stays put
        ranges = [(-rows[0], canvas - 1 - rows[-1]), (-cols[0], canvas - 1 - cols[-1])]
        if max_translation is not None:
            m = int(max_translation)
            ranges = [(max(a, -m), min(b, m)) for a, b in ranges]
        (a0, b0), (a1, b1) = ranges
        ty[k] = a0 + min(int(u[k, 0] * (b0 - a0 + 1)), b0 - a0)
        tx[k] = a1 + min(int(u[k, 1] * (b1 - a1 + 1)), b1 - a1)
    out = np.zeros_like(centred)
    for k in range(n):                                                          # integer shifts: exact copies
        dy, dx = ty[k], tx[k]
        out[k, max(dy, 0):canvas + min(dy, 0), max(dx, 0):canvas + min(dx, 0)] = \
            centred[k, max(-dy, 0):canvas + min(-dy, 0), max(-dx, 0):canvas + min(-dx, 0)]
    params = {"rotation_deg": rot, "shear": shr, "scale_x": sx, "scale_y": sy, "shift_y": ty, "shift_x": tx}
    where = "anywhere the digit fits" if max_translation is None else f"up to ±{int(max_translation)} px"
    description = (f"{n:,} digits, random affine on a {canvas}×{canvas} canvas (seed {seed}): rotation "
                   f"±{max_rotation:g}°, shear ±{max_shear:g}, scale {lo:g}–{hi:g} per axis, translation {where}")
    return AffineMNIST(out[..., None], y, params, description)


# --------------------------------------------------------------------------- MultiMNIST


class MultiMNIST(NamedTuple):
    """Generated MultiMNIST: images ``(n, canvas, canvas, 1)`` (the two digits overlaid),
    labels ``(n, 2)`` (the two classes, different), two_hot ``(n, 10)`` (1 at both classes),
    digits ``(n, 2, canvas, canvas, 1)`` (each shifted digit alone: the reconstruction targets)."""

    images: np.ndarray
    labels: np.ndarray
    two_hot: np.ndarray
    digits: np.ndarray
    description: str


def multi_mnist(images, labels, n: int, seed, canvas: int = 36, max_shift: int = 4,
                combine: str = "sum") -> MultiMNIST:
    """MultiMNIST as in the paper: two digits of *different* classes, each shifted by up to
    ``max_shift`` pixels in each direction on a ``canvas × canvas`` image, overlaid.

    images ``(N, 28, 28, 1)`` in [0, 1] and labels ``(N,)``: the digits to draw from (use one
    split only, as the paper does: train pairs from train digits, test pairs from test digits).
    n: pairs to make. For each pair the first digit is drawn uniformly from all N; the second's
    class uniformly from the *other* classes present, then a digit of that class uniformly. Each
    digit is centred on the canvas (28 → 36: a 4-pixel border) and moved by its own integer
    (dy, dx), uniform in ``−max_shift…max_shift``.
    combine: ``"sum"`` → ``clip(a + b, 0, 1)``; ``"max"`` → ``maximum(a, b)``.
    Returns :class:`MultiMNIST` (float32 images, int64 labels, float32 two-hot and digits).
    """
    x = _images(images, "multi_mnist")
    y = _labels(labels, len(x), "multi_mnist")
    if combine not in ("sum", "max"):
        raise ValueError(f"multi_mnist: combine must be 'sum' or 'max', got {combine!r}")
    if int(n) < 1:
        raise ValueError(f"multi_mnist: n must be ≥ 1, got {n}")
    classes = np.unique(y)
    if len(classes) < 2:
        _fail("multi_mnist", "labels", f"need digits of at least two classes, got only {classes.tolist()}")
    n = int(n)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(x), n)
    # The second class: uniform over the other classes present (k steps on around the circle).
    pos = np.searchsorted(classes, y[first])
    other = classes[(pos + rng.integers(1, len(classes), n)) % len(classes)]
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    pick = rng.uniform(size=n)
    second = np.array([by_class[c][int(p * len(by_class[c]))] for c, p in zip(other, pick)])
    pair_idx = np.stack([first, second], 1)                                     # (n, 2)
    placed = np.stack([
        pad_to_canvas(x[pair_idx[:, k]], canvas, max_shift, seed=int(rng.integers(2**31)))[..., 0]
        for k in range(2)], 1)                                                  # (n, 2, canvas, canvas)
    merged = np.clip(placed.sum(1), 0, 1) if combine == "sum" else placed.max(1)
    pair_labels = y[pair_idx]                                                   # (n, 2)
    two_hot = np.zeros((n, 10), np.float32)
    two_hot[np.arange(n)[:, None], pair_labels] = 1.0
    overlay = "clip(a + b, 0, 1)" if combine == "sum" else "max(a, b)"
    description = (f"{n:,} MultiMNIST pairs on a {canvas}×{canvas} canvas (seed {seed}): two digits of different "
                   f"classes, each shifted up to ±{max_shift} px, {overlay}")
    return MultiMNIST(merged.astype(np.float32)[..., None], pair_labels, two_hot,
                      placed.astype(np.float32)[..., None], description)


def two_digit_accuracy(lengths, labels) -> float:
    """Fraction of images whose two longest capsules are exactly the two true classes.

    lengths: ``(n, 10)`` capsule lengths; labels: ``(n, 2)`` integer classes (either order).
    """
    lengths = keras.ops.convert_to_numpy(lengths)
    labels = np.asarray(labels)
    if lengths.ndim != 2 or labels.shape != (lengths.shape[0], 2):
        _fail("two_digit_accuracy", "lengths, labels",
              f"expected (n, classes) and (n, 2), got {lengths.shape} and {labels.shape}")
    top2 = np.sort(np.argsort(-lengths, axis=-1)[:, :2], axis=-1)
    return float(np.mean(np.all(top2 == np.sort(labels, axis=-1), axis=-1)))


@keras.saving.register_keras_serializable(package="capslib")
class MultiDigitCapsNet(CapsNet):
    """CapsNet trained on two overlapping digits, with the paper's MultiMNIST loss.

    ``fit(x, y)`` with x the overlaid images ``(batch, 36, 36, 1)`` and y a pair
    ``(labels_onehot, digits)``: labels_onehot ``(batch, 2, 10)`` (one one-hot row per digit) and
    digits ``(batch, 2, 36, 36, 1)`` (each digit alone). The loss is

        margin_loss(two_hot, lengths)  +  Σ_{k=1,2} 0.0005 · ‖digit_k − decode(v masked to class_k)‖²

    with ``two_hot = labels_onehot.sum(1)``: the margin loss wants *both* capsules long, and the
    decoder learns to redraw each digit from its own capsule alone. (``CapsNet.compute_loss``
    masks with the label, and a two-hot mask would keep both capsules at once.)
    Compile with an optimizer only: ``model.compile(optimizer=...)``. ``call``/``predict`` are
    CapsNet's: lengths and the reconstruction from the longest capsule.
    """

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y, (tuple, list)) or len(y) != 2:
            raise ShapeError("ShapeError in MultiDigitCapsNet (y): expected a pair (labels_onehot (batch, 2, 10), "
                             "digits (batch, 2, H, W, 1))")
        labels, digits = y
        shape = tuple(labels.shape)
        if len(shape) != 3 or shape[1:] != (2, self.num_classes):
            _fail("MultiDigitCapsNet", "labels_onehot", f"expected (batch, 2, {self.num_classes}), got {shape}")
        want = (2,) + self.image_shape
        if tuple(digits.shape[1:]) != want:
            _fail("MultiDigitCapsNet", "digits", f"expected (batch, {', '.join(map(str, want))}), "
                                                 f"got {tuple(digits.shape)}")
        lengths, _ = y_pred
        v = self._step.capsules
        loss = margin_loss(keras.ops.sum(labels, axis=1), lengths) * self.margin_scale
        for k in range(2):
            recon = self.decode(v, labels[:, k])                    # only digit k's capsule kept
            loss = loss + reconstruction_loss(digits[:, k], recon, self.reconstruction_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # No compiled metrics: fit reports the loss; use two_digit_accuracy on predictions.
        return self.get_metrics_result()

    def lengths_of(self, images, batch_size=64):
        """Capsule lengths ``(n, 10)`` for many images, in batches (NumPy)."""
        out = [keras.ops.convert_to_numpy(capsule_length(self.encode(images[i:i + batch_size])))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)
