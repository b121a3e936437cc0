"""Plotting helpers the book's chapters share (matplotlib only; every figure is made by code).

Every function returns the matplotlib ``Figure`` it drew on and never calls ``plt.show()``
(a notebook displays a returned figure by itself). Inputs are NumPy arrays or backend tensors;
a wrong shape raises :class:`capslib.ShapeError` (a ``ValueError``) naming the function and the
shape it expects.

=======================  ==============================================  =========================
function                 input                                           draws
=======================  ==============================================  =========================
``plot_history``         a ``capslib.train`` history record              loss and accuracy curves
``network_stages``       a CapsNet (or None: a fresh default one)        (list of stages, no plot)
``network_diagram``      a CapsNet (or None)                             every stage, shape, params
``show_images``          images ``(n, H, W)`` or ``(n, H, W, 1)``        a grid of images
``show_feature_maps``    maps ``(H, W, C)`` (or ``(1, H, W, C)``)        a grid of ``n`` channels
``capsule_grid``         lengths ``(1152,)`` (or ``(1, 1152)``)          32 panels of 6×6
``plot_couplings``       couplings ``(in_caps, out_caps)``, e.g.         heat map, or one 6×6
                         ``(1152, 10)`` (or ``(1, 1152, 10)``)           panel per class
``tile_images``          ``(rows, cols, H, W)``                          (one mosaic array, no plot)
``perturbation_grid``    decoded ``(16, 11, H, W)``, the deltas          the paper's Figure 4
``reconstruction_pairs`` originals, reconstructions ``(n, H, W)``,       image | reconstruction,
                         labels, predictions ``(n,)``                    label and prediction
``color_overlay``        two ``(n, H, W)`` images                        (RGB array, no plot)
``overlay_pairs``        inputs, first, second ``(n, H, W)``             input over a red/green
                                                                         overlay (Figure 5)
``coupling_iterations``  couplings ``(iterations, 1152, 10)``            one row per iteration
=======================  ==============================================  =========================
"""

from __future__ import annotations

import textwrap

import math

import matplotlib.pyplot as plt
import numpy as np

from .shapes import ShapeError

__all__ = ["plot_history", "network_stages", "network_diagram", "show_images", "show_feature_maps",
           "capsule_grid", "plot_couplings", "tile_images", "perturbation_grid", "reconstruction_pairs",
           "color_overlay", "overlay_pairs", "coupling_iterations"]


def plot_history(record, ax=None):
    """Loss and accuracy per epoch from a history record (``capslib.train``'s history.json).

    Returns the matplotlib Figure: loss on the left, accuracy (train and test) on the right.
    """
    epochs = record["epochs"]
    if not epochs:
        raise ValueError("plot_history: the history has no epochs yet")
    x = [e["epoch"] for e in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("loss", "train"), ("val_loss", "test")):
        if key in epochs[0]:
            ax_loss.plot(x, [e[key] for e in epochs], marker="o", label=label)
    for key, label in (("categorical_accuracy", "train"), ("val_categorical_accuracy", "test")):
        if key in epochs[0]:
            ax_acc.plot(x, [100 * e[key] for e in epochs], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss (margin + 0.0005·reconstruction)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax_ in (ax_loss, ax_acc):
        ax_.grid(alpha=0.3)
        ax_.legend()
    fig.suptitle(textwrap.fill(record.get("data", ""), 110), fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- helpers


def _numpy(x, where):
    """Any array or backend tensor → a float NumPy array (a clear error for anything else)."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            import keras
            arr = keras.ops.convert_to_numpy(x)
        except Exception:
            arr = np.asarray(x)
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"ShapeError in {where}: expected a numeric array, got {type(x).__name__}") from e


def _shape_error(function, tensor, expected, got):
    return ShapeError(f"ShapeError in {function} ({tensor}): expected {expected}, got {tuple(got)}")


def _panel(a, image, title=None, title_kw=None, **imshow_kw):
    """One small image panel on axes ``a``, without ticks; returns imshow's image (for a colorbar)."""
    im = a.imshow(image, **imshow_kw)
    a.set_xticks([])
    a.set_yticks([])
    if title is not None:
        a.set_title(title, **{"fontsize": 8, **(title_kw or {})})
    return im


def _grid_axes(n, ncols, ax, function, panel_size=1.2, extra_height=0.0):
    """A figure with ≥ n axes laid out ncols wide, or the caller's axes. Returns (fig, axes[:n])."""
    if ax is None:
        ncols = max(1, min(ncols, n))
        nrows = math.ceil(n / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + extra_height),
                                 squeeze=False)
        axes = axes.ravel()
        for a in axes[n:]:
            a.remove()
        return fig, list(axes[:n])
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) < n:
        raise ValueError(f"{function}: {n} panels need {n} axes, got {len(axes)}")
    return axes[0].figure, axes[:n]


def _fmt_shape(shape):
    dims = ["batch"] + [str(d) for d in shape[1:]]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


# --------------------------------------------------------------------------- the whole network


def network_stages(model=None, images=None):
    """Run one batch through a CapsNet and record every stage: what it makes, shape, parameters.

    model: a :class:`capslib.CapsNet` (None: a freshly built default one — 8.2M parameters).
    images: optional ``(batch, H, W, C)`` floats of the model's image size; default one zero image.
    Returns a list of dicts with keys ``stage`` (e.g. ``"conv1"``), ``op`` (what it does),
    ``tensor`` (the name of what it makes), ``shape`` (the tensor's shape as a tuple, read from
    the tensor itself), ``params`` (the stage's trainable parameter count; 0 for a
    parameter-free stage). Nothing is hard-coded: a smaller CapsNet gives smaller shapes.
    """
    from .model import CapsNet

    if model is None:
        model = CapsNet()
    for name in ("conv1", "primary_caps", "digit_caps", "length", "mask", "decoder", "image_shape"):
        if not hasattr(model, name):
            raise TypeError(f"network_stages: expected a capslib.CapsNet, got {type(model).__name__} "
                            f"(no attribute {name!r})")
    if images is None:
        images = np.zeros((1,) + tuple(model.image_shape), dtype="float32")
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or tuple(shape[1:]) != tuple(model.image_shape):
        raise _shape_error("network_stages", "images", _fmt_shape((None,) + tuple(model.image_shape)), shape)
    model.check_images(images)                                # float, non-empty

    pc, dc = model.primary_caps, model.digit_caps
    features = model.conv1(images)
    primary_conv = pc.conv(features)
    u = pc(features)
    u_hat = dc.predictions(u)
    v, c = dc(u, return_coupling=True)
    lengths = model.length(v)
    masked = model.mask(v)
    recon = model.decoder(masked)

    def n_params(layer):
        return int(sum(int(np.prod(w.shape)) for w in layer.trainable_weights))

    k1, s1 = model.conv1.kernel_size, model.conv1.strides
    n_conv1 = model.conv1.filters
    n_types, dim = pc.num_types, pc.dim
    stages = [
        dict(stage="input", op="images", tensor="images", shape=images.shape, params=0),
        dict(stage="conv1", op=f"Conv2D {n_conv1}@{k1[0]}×{k1[1]}, stride {s1[0]}, ReLU",
             tensor="features", shape=features.shape, params=n_params(model.conv1)),
        dict(stage="PrimaryCaps conv", op=f"Conv2D {n_types}·{dim}@{pc.kernel_size}×{pc.kernel_size}, stride {pc.strides}",
             tensor="primary conv", shape=primary_conv.shape, params=n_params(pc)),
        dict(stage="PrimaryCaps", op=f"reshape to {n_types} types × {dim} dims, squash",
             tensor="u", shape=u.shape, params=0),
        dict(stage="DigitCaps predictions", op="û_j|i = W_ij u_i", tensor="u_hat", shape=u_hat.shape,
             params=n_params(dc)),
        dict(stage="dynamic routing", op=f"{dc.routing_iterations} iterations: couplings c",
             tensor="c", shape=c.shape, params=0),
        dict(stage="dynamic routing", op="v_j = squash(Σ_i c_ij û_j|i)", tensor="v", shape=v.shape, params=0),
        dict(stage="Length", op="|v_j| = class probabilities", tensor="lengths", shape=lengths.shape, params=0),
        dict(stage="Mask", op="keep one capsule; flatten", tensor="masked", shape=masked.shape, params=0),
        dict(stage="Decoder", op=" → ".join(str(h) for h in model.decoder.hidden) + f" → {int(np.prod(model.image_shape))} pixels",
             tensor="reconstructions", shape=recon.shape, params=n_params(model.decoder)),
    ]
    for s in stages:
        s["shape"] = tuple(int(d) for d in s["shape"])
    return stages


def network_diagram(model=None, ax=None, images=None):
    """The whole CapsNet as boxes and arrows, each box a stage with its tensor's shape and the
    stage's parameter count — all read from a real model by :func:`network_stages` (one batch is
    run through it), never typed in.

    model: a :class:`capslib.CapsNet` or None (a fresh default CapsNet). ax: optional Axes to
    draw on. images: optional ``(batch, H, W, C)`` batch to run (default: one zero image).
    Shapes are printed with the batch dim written ``batch``. Returns the Figure.
    """
    stages = network_stages(model, images)
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 10.5))
    else:
        fig = ax.figure
    ax.set_axis_off()
    ax.set_xlim(0, 12.9)

    # Main column top to bottom (input … v); then two branches: lengths (loss) and the decoder.
    main = stages[:7]
    row_h = 1.0
    pos = {}
    for k, s in enumerate(main):
        pos[k] = (4.6, -k * row_h)
    y_branch = -len(main) * row_h - 0.25
    pos[7] = (2.0, y_branch)                  # lengths
    pos[8] = (7.5, y_branch)                  # masked
    pos[9] = (7.5, y_branch - row_h)          # reconstructions
    box_w, box_h = 6.2, 0.68
    colors = {0: "#eeeeee", 7: "#fde0c5", 8: "#e0ecf8", 9: "#e0ecf8"}

    def box(k, w=box_w):
        x, y = pos[k]
        s = stages[k]
        ax.add_patch(plt.Rectangle((x - w / 2, y - box_h / 2), w, box_h, facecolor=colors.get(k, "#dff2e1"),
                                   edgecolor="#444444", linewidth=1.0, zorder=2))
        ax.text(x, y + 0.15, f"{s['stage']}: {s['op']}", ha="center", va="center", fontsize=8.5, zorder=3)
        ax.text(x, y - 0.15, f"{s['tensor']}  {_fmt_shape(s['shape'])}", ha="center", va="center",
                fontsize=9, family="monospace", weight="bold", zorder=3)
        if s["params"]:
            ax.text(x + w / 2 + 0.15, y, f"{s['params']:,} params", ha="left", va="center", fontsize=8.5,
                    color="#7a1f1f")

    def arrow(a, b):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        ax.annotate("", xy=(xb, yb + box_h / 2), xytext=(xa, ya - box_h / 2),
                    arrowprops=dict(arrowstyle="-|>", color="#444444", lw=1.2), zorder=1)

    branch_w = 4.0
    for k in range(len(main)):
        box(k)
    for k in (7, 8, 9):
        box(k, w=branch_w if k == 7 else 5.6)
    for k in range(len(main) - 1):
        arrow(k, k + 1)
    arrow(6, 7)
    arrow(6, 8)
    arrow(8, 9)
    total = sum(s["params"] for s in stages)
    x7, y7 = pos[7]
    ax.text(x7, y7 - box_h / 2 - 0.3, "→ margin loss, prediction", ha="center", va="top", fontsize=8.5)
    x9, y9 = pos[9]
    ax.text(x9, y9 - box_h / 2 - 0.3, "→ reconstruction loss", ha="center", va="top", fontsize=8.5)
    ax.set_ylim(y9 - 1.0, 0.8)
    batch = stages[0]["shape"][0]
    ax.set_title(f"CapsNet, shape by shape: {total:,} trainable parameters\n"
                 f"(every shape read from one batch of {batch} image{'s' if batch != 1 else ''} "
                 "run through the model)", fontsize=10)
    return fig


# --------------------------------------------------------------------------- images and maps


def show_images(images, titles=None, ncols=8, cmap="gray", ax=None, vmin=None, vmax=None, title_colors=None):
    """A grid of images.

    images: ``(n, H, W)`` or ``(n, H, W, 1)`` (e.g. a batch of digits ``(8, 28, 28, 1)``).
    titles: optional list of n strings, one above each image; title_colors: optional n colours.
    ncols: images per row. ax: optional Axes (one per image) to draw into instead of a new figure.
    vmin, vmax: one grey scale for every image (e.g. 0, 1 so faint reconstructions stay faint);
    by default each image is scaled to its own range.
    Returns the Figure (n image axes).
    """
    x = _numpy(images, "show_images (images)")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[0] == 0:
        raise _shape_error("show_images", "images", "(n, H, W) or (n, H, W, 1)", np.shape(images))
    n = x.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"show_images: {len(titles)} titles for {n} images")
    fig, axes = _grid_axes(n, ncols, ax, "show_images", panel_size=1.3, extra_height=0.2 if titles else 0)
    for k, a in enumerate(axes):
        _panel(a, x[k], None if titles is None else str(titles[k]), cmap=cmap, vmin=vmin, vmax=vmax,
               title_kw={"color": title_colors[k]} if title_colors else None)
    return fig


def show_feature_maps(maps, n=16, ncols=8, cmap="viridis", title=None, channels=None, shared_scale=False):
    """A grid of ``n`` channels of one feature map, each channel a small image.

    maps: ``(H, W, C)`` — one example, e.g. conv1's ``(20, 20, 256)`` — or ``(1, H, W, C)``.
    n: how many channels to show (the first n, or ``channels`` if given: a list of indices).
    shared_scale: one colour scale for all panels (with a colorbar), so brightness compares across
    channels; default: each panel scaled to its own range.
    Returns the Figure (n image axes, plus a colorbar axis when shared_scale).
    """
    x = _numpy(maps, "show_feature_maps (maps)")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise _shape_error("show_feature_maps", "maps", "(H, W, C) or (1, H, W, C)", np.shape(maps))
    n_ch = x.shape[-1]
    channels = list(range(min(n, n_ch))) if channels is None else [int(c) for c in channels]
    if not channels or any(not 0 <= c < n_ch for c in channels):
        raise ValueError(f"show_feature_maps: channels must be in 0–{n_ch - 1}, got {channels}")
    fig, axes = _grid_axes(len(channels), ncols, None, "show_feature_maps", panel_size=1.25,
                           extra_height=0.5 if title else 0.2)
    vmin, vmax = (float(x[..., channels].min()), float(x[..., channels].max())) if shared_scale else (None, None)
    for a, ch in zip(axes, channels):
        im = _panel(a, x[..., ch], f"ch {ch}", cmap=cmap, vmin=vmin, vmax=vmax)
    if shared_scale:
        fig.colorbar(im, ax=axes, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- capsules


def capsule_grid(lengths, grid=(6, 6, 32), ncols=8, title=None, vmax=None, cmap="magma"):
    """Primary-capsule lengths as one small ``rows × cols`` panel per capsule type.

    lengths: ``(in_caps,)`` with in_caps = rows·cols·types, e.g. ``(1152,)`` for the default
    ``grid=(6, 6, 32)``; ``(1, in_caps)`` or ``(rows, cols, types)`` are accepted too. Capsule
    ``i = (row·cols + col)·types + t`` (capslib.PrimaryCaps' order) goes to panel t at (row, col).
    vmax: top of the colour scale (default: the largest length). Returns the Figure
    (``types`` image axes and one colorbar).
    """
    rows, cols, types = (int(g) for g in grid)
    n_caps = rows * cols * types
    x = _numpy(lengths, "capsule_grid (lengths)")
    if x.shape in ((1, n_caps),):
        x = x[0]
    if x.shape == (rows, cols, types):
        x = x.reshape(n_caps)
    if x.shape != (n_caps,):
        raise _shape_error("capsule_grid", "lengths", f"({n_caps},) for grid {(rows, cols, types)}", np.shape(lengths))
    cube = x.reshape(rows, cols, types)                      # [row, col, type]
    fig, axes = _grid_axes(types, ncols, None, "capsule_grid", panel_size=1.15, extra_height=0.5)
    vmax = float(x.max()) if vmax is None else float(vmax)
    for t, a in enumerate(axes):
        im = _panel(a, cube[:, :, t], f"type {t}", cmap=cmap, vmin=0.0, vmax=vmax, title_kw={"fontsize": 7})
    fig.colorbar(im, ax=axes, shrink=0.8, label="capsule length")
    fig.suptitle(title or f"{n_caps} capsule lengths: {types} types × {rows}×{cols} positions", fontsize=10)
    return fig



def _per_position(c, grid, reduce, where):
    """Couplings ``(..., in_caps, out_caps)`` → ``(..., rows, cols, out_caps)``: the capsule types at
    each position of the primary-capsule grid reduced by ``reduce`` (capsule i = (row·cols + col)·types + t)."""
    rows, cols, types = (int(g) for g in grid)
    n_in, n_out = c.shape[-2:]
    if rows * cols * types != n_in:
        raise ShapeError(f"ShapeError in {where}: grid {(rows, cols, types)} needs in_caps = "
                         f"{rows * cols * types}, got {tuple(c.shape)}")
    reducers = {"mean": np.mean, "max": np.max, "sum": np.sum}
    if reduce not in reducers:
        raise ValueError(f"{where.split()[0]}: reduce must be one of {sorted(reducers)}, got {reduce!r}")
    return reducers[reduce](c.reshape(c.shape[:-2] + (rows, cols, types, n_out)), axis=-2)

def plot_couplings(c, title=None, class_names=None, grid=None, reduce="mean", vmax=None, ax=None,
                   cmap="viridis"):
    """Heat map of routing couplings c_ij (how much input capsule i sends to output capsule j).

    c: ``(in_caps, out_caps)`` for one example, e.g. ``(1152, 10)``, or ``(1, in_caps, out_caps)``.
    title: optional text. class_names: optional out_caps labels (default 0…out_caps-1).
    grid: None → one image, out_caps rows × in_caps columns, with the classes labelled (any
    in_caps, out_caps). ``grid=(rows, cols, types)`` with rows·cols·types = in_caps, e.g.
    ``(6, 6, 32)`` → one rows×cols panel per output capsule, the couplings of the ``types``
    capsules at each position reduced by ``reduce`` (``"mean"``, ``"max"`` or ``"sum"``).
    vmax: top of the colour scale (default: the largest value shown) — pass the same vmax to
    compare routing iterations. ax: optional Axes (grid=None) or out_caps Axes (grid) to draw into.
    Returns the Figure.
    """
    x = _numpy(c, "plot_couplings (c)")
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2 or 0 in x.shape:
        hint = " — pick one example, e.g. c[0]" if x.ndim == 3 else ""
        raise ShapeError(f"ShapeError in plot_couplings (c): expected (in_caps, out_caps), e.g. (1152, 10), "
                         f"got {tuple(np.shape(c))}{hint}")
    n_in, n_out = x.shape
    names = [str(k) for k in range(n_out)] if class_names is None else [str(k) for k in class_names]
    if len(names) != n_out:
        raise ValueError(f"plot_couplings: {len(names)} class_names for {n_out} output capsules")

    if grid is None:
        if ax is None:
            fig, ax = plt.subplots(figsize=(9, 0.3 * n_out + 1.4))
        else:
            fig = ax.figure
        vmax_ = float(x.max()) if vmax is None else float(vmax)
        im = ax.imshow(x.T, aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax_, interpolation="nearest")
        ax.set_yticks(range(n_out))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_ylabel("output capsule j")
        ax.set_xlabel(f"input capsule i (0…{n_in - 1})")
        fig.colorbar(im, ax=ax, label="coupling c_ij", pad=0.01)
        ax.set_title(title or f"couplings c, shape {(n_in, n_out)}", fontsize=10)
        return fig

    per_pos = _per_position(x, grid, reduce, "plot_couplings (c)")              # (rows, cols, out_caps)
    rows, cols, types = per_pos.shape[0], per_pos.shape[1], int(grid[2])
    fig, axes = _grid_axes(n_out, min(n_out, 10), ax, "plot_couplings", panel_size=1.3, extra_height=0.6)
    vmax_ = float(per_pos.max()) if vmax is None else float(vmax)
    for j, a in enumerate(axes):
        im = _panel(a, per_pos[:, :, j], f"→ {names[j]}", cmap=cmap, vmin=0.0, vmax=vmax_)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"{reduce} of c over {types} types")
    fig.suptitle(title or f"couplings c {(n_in, n_out)}: {reduce} over types, one {rows}×{cols} panel per output",
                 fontsize=10)
    return fig


# --------------------------------------------------------------------------- what capsules learn


def tile_images(images, pad=1, pad_value=np.nan):
    """A ``(rows, cols, H, W)`` (or ``(rows, cols, H, W, 1)``) stack of images → one mosaic array.

    Panels are separated by ``pad`` pixels of ``pad_value`` (NaN: drawn as the background by
    ``imshow``). Returns ``(rows·(H + pad) − pad, cols·(W + pad) − pad)``; panel (r, c) starts at
    row ``r·(H + pad)``, column ``c·(W + pad)``. One image instead of rows × cols axes: a 16 × 11
    grid draws in a fraction of the time.
    """
    x = _numpy(images, "tile_images (images)")
    if x.ndim == 5 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 4 or 0 in x.shape:
        raise _shape_error("tile_images", "images", "(rows, cols, H, W) or (rows, cols, H, W, 1)", np.shape(images))
    rows, cols, h, w = x.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), pad_value, dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = x[r, c]
    return out


def perturbation_grid(decoded, deltas, title=None, ax=None, cmap="gray_r", dims=None, highlight=None):
    """The paper's Figure 4: one row per capsule dimension, one column per perturbation.

    decoded: ``(n_dims, n_deltas, H, W)`` or ``(n_dims, n_deltas, H, W, 1)`` — row d, column k is
    the decoder's image after adding ``deltas[k]`` to dimension d of one capsule (e.g.
    ``(16, 11, 28, 28)`` for deltas −0.25, −0.20, …, 0.25). deltas: the n_deltas values (column
    labels). dims: optional row labels (default 0…n_dims−1). highlight: optional column index to
    outline (e.g. the unperturbed delta 0). ax: optional Axes. Returns the Figure; pixels share one
    grey scale, 0 to 1.
    """
    x = _numpy(decoded, "perturbation_grid (decoded)")
    if x.ndim == 5 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 4:
        raise _shape_error("perturbation_grid", "decoded", "(n_dims, n_deltas, H, W) or (…, 1)", np.shape(decoded))
    n_dims, n_deltas, h, w = x.shape
    deltas = np.asarray(deltas, dtype=np.float64).reshape(-1)
    if len(deltas) != n_deltas:
        raise ValueError(f"perturbation_grid: {len(deltas)} deltas for {n_deltas} columns")
    dims = list(range(n_dims)) if dims is None else list(dims)
    if len(dims) != n_dims:
        raise ValueError(f"perturbation_grid: {len(dims)} dims labels for {n_dims} rows")
    mosaic = tile_images(x, pad=1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.42 * n_deltas + 1.0, 0.42 * n_dims + 0.9))
    else:
        fig = ax.figure
    ax.set_facecolor("#c8d4e3")                               # the NaN gaps between panels
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([k * (w + 1) + (w - 1) / 2 for k in range(n_deltas)])
    ax.set_xticklabels([f"{d:+.2f}" for d in deltas], rotation=90, fontsize=7)
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(n_dims)])
    ax.set_yticklabels([str(d) for d in dims], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("perturbation added to the dimension", fontsize=8)
    ax.set_ylabel("capsule dimension", fontsize=8)
    if highlight is not None:
        ax.add_patch(plt.Rectangle((highlight * (w + 1) - 1, -1), w + 1, n_dims * (h + 1),
                                   fill=False, edgecolor="#d62728", linewidth=1.2))
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def reconstruction_pairs(originals, reconstructions, labels, predictions, ncols=5, lengths=None, cmap="gray_r"):
    """Each image beside its reconstruction, titled with the true label and the prediction.

    originals, reconstructions: ``(n, H, W)`` or ``(n, H, W, 1)``; labels, predictions: ``(n,)``
    integers; lengths: optional ``(n,)`` (the predicted capsule's length, shown in the title).
    ncols: pairs per row. A wrong prediction's title is red. Returns the Figure (2·n image axes,
    originals at even positions).
    """
    a = _numpy(originals, "reconstruction_pairs (originals)")
    b = _numpy(reconstructions, "reconstruction_pairs (reconstructions)")
    a, b = (z[..., 0] if z.ndim == 4 and z.shape[-1] == 1 else z for z in (a, b))
    if a.ndim != 3 or a.shape != b.shape or a.shape[0] == 0:
        raise ShapeError(f"ShapeError in reconstruction_pairs (originals, reconstructions): expected two "
                         f"(n, H, W) arrays of one shape, got {tuple(np.shape(originals))} and "
                         f"{tuple(np.shape(reconstructions))}")
    n = a.shape[0]
    labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if len(labels) != n or len(predictions) != n or (lengths is not None and len(lengths) != n):
        raise ValueError(f"reconstruction_pairs: {n} images need {n} labels, predictions (and lengths)")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(1.25 * 2 * ncols, 1.45 * nrows + 0.3), squeeze=False,
                             gridspec_kw={"wspace": 0.05})
    for k in range(nrows * ncols):
        ax_o, ax_r = axes[k // ncols, 2 * (k % ncols)], axes[k // ncols, 2 * (k % ncols) + 1]
        if k >= n:
            ax_o.remove()
            ax_r.remove()
            continue
        ax_o.imshow(a[k], cmap=cmap, vmin=0.0, vmax=1.0)
        ax_r.imshow(b[k], cmap=cmap, vmin=0.0, vmax=1.0)
        for ax_ in (ax_o, ax_r):
            ax_.set_xticks([])
            ax_.set_yticks([])
        ax_o.set_title(f"label {labels[k]}", fontsize=8)
        extra = f" |v|={float(lengths[k]):.2f}" if lengths is not None else ""
        ax_r.set_title(f"pred {predictions[k]}{extra}", fontsize=8,
                       color="#d62728" if predictions[k] != labels[k] else "black")
    return fig


def color_overlay(first, second):
    """Two grey images → one RGB image: ``first`` in red, ``second`` in green (both: yellow).

    first, second: ``(n, H, W)`` or ``(n, H, W, 1)`` in [0, 1] (also one image ``(H, W)``).
    Returns ``(n, H, W, 3)`` (or ``(H, W, 3)``) in [0, 1], the paper's Figure 5 colouring.
    """
    a = _numpy(first, "color_overlay (first)")
    b = _numpy(second, "color_overlay (second)")
    a, b = (z[..., 0] if z.ndim in (3, 4) and z.shape[-1] == 1 else z for z in (a, b))
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ShapeError(f"ShapeError in color_overlay (first, second): expected two (n, H, W) arrays of one "
                         f"shape, got {tuple(np.shape(first))} and {tuple(np.shape(second))}")
    return np.clip(np.stack([a, b, np.zeros_like(a)], axis=-1), 0.0, 1.0)


def overlay_pairs(inputs, first, second, titles=None, cmap="gray"):
    """Inputs (top row) and two reconstructions overlaid in colour (bottom row, red and green).

    inputs, first, second: ``(n, H, W)`` or ``(n, H, W, 1)`` in [0, 1], e.g. MultiMNIST images
    and the decoder's drawings from each of the two digit capsules. titles: optional n strings
    (under the overlays). Returns the Figure (2·n image axes: inputs first).
    """
    x = _numpy(inputs, "overlay_pairs (inputs)")
    x = x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
    rgb = color_overlay(first, second)
    if x.ndim != 3 or rgb.shape[:3] != x.shape or x.shape[0] == 0:
        raise ShapeError(f"ShapeError in overlay_pairs (inputs): expected (n, H, W) matching the reconstructions "
                         f"{tuple(rgb.shape[:3])}, got {tuple(np.shape(inputs))}")
    n = x.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"overlay_pairs: {len(titles)} titles for {n} images")
    fig, axes = plt.subplots(2, n, figsize=(1.35 * n, 3.2), squeeze=False)
    for k in range(n):
        axes[0, k].imshow(x[k], cmap=cmap, vmin=0.0, vmax=1.0)
        axes[1, k].imshow(rgb[k])
        for ax_ in axes[:, k]:
            ax_.set_xticks([])
            ax_.set_yticks([])
        if titles is not None:
            axes[1, k].set_xlabel(str(titles[k]), fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("red + green", fontsize=8)
    return fig


def coupling_iterations(cs, grid=(6, 6, 32), class_names=None, reduce="mean", highlight=None, cmap=None,
                        deviation=False):
    """Routing couplings iteration by iteration: one row per iteration, one panel per output capsule.

    cs: ``(iterations, in_caps, out_caps)``, e.g. ``(3, 1152, 10)`` — the couplings c_ij used in
    iterations 1, 2, 3 for one example. grid: ``(rows, cols, types)`` with rows·cols·types =
    in_caps; each panel shows c reduced over the types (``"mean"``, ``"max"``, ``"sum"``) at every
    position. highlight: optional output capsule whose panels get a red frame (e.g. the
    prediction). One colour scale for every panel, so iterations compare. deviation: show
    ``c − 1/out_caps`` (how far routing moved each coupling from uniform) on a diverging scale
    centred at 0 — useful when the couplings stay close to uniform. Returns the Figure.
    """
    x = _numpy(cs, "coupling_iterations (cs)")
    if x.ndim != 3 or 0 in x.shape:
        raise _shape_error("coupling_iterations", "cs", "(iterations, in_caps, out_caps), e.g. (3, 1152, 10)",
                           np.shape(cs))
    n_it, n_in, n_out = x.shape
    per_pos = _per_position(x, grid, reduce, "coupling_iterations (cs)")        # (iterations, rows, cols, out)
    rows, cols, types = per_pos.shape[1], per_pos.shape[2], int(grid[2])
    names = [str(k) for k in range(n_out)] if class_names is None else [str(k) for k in class_names]
    if len(names) != n_out:
        raise ValueError(f"coupling_iterations: {len(names)} class_names for {n_out} output capsules")
    fig, axes = plt.subplots(n_it, n_out, figsize=(1.15 * n_out + 1.2, 1.2 * n_it + 0.7), squeeze=False)
    if deviation:
        per_pos = per_pos - 1.0 / n_out
        vmax = max(float(np.abs(per_pos).max()), 1e-12)
        vmin, cmap = -vmax, cmap or "RdBu_r"
        label = f"{reduce} of c_ij − 1/{n_out} over {types} types"
    else:
        vmin, vmax, cmap = 0.0, float(per_pos.max()), cmap or "viridis"
        label = f"{reduce} of c_ij over {types} types"
    for r in range(n_it):
        for j in range(n_out):
            ax_ = axes[r, j]
            im = ax_.imshow(per_pos[r, :, :, j], cmap=cmap, vmin=vmin, vmax=vmax)
            ax_.set_xticks([])
            ax_.set_yticks([])
            if r == 0:
                ax_.set_title(f"→ {names[j]}", fontsize=8)
            if j == 0:
                ax_.set_ylabel(f"iteration {r + 1}", fontsize=8)
            if highlight is not None and j == int(highlight):
                for side in ax_.spines.values():
                    side.set_edgecolor("#d62728")
                    side.set_linewidth(2.0)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, label=label)
    fig.suptitle(f"couplings c {(n_in, n_out)} per routing iteration: {rows}×{cols} positions per output capsule",
                 fontsize=10)
    return fig
