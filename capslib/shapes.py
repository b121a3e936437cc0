"""Shape assertions in named dims.

Every stage of CapsNet calls :func:`check_shape` on the tensor it makes. The check reads the
*static* shape, so under ``tf.function`` / ``jax.jit`` it runs once while the graph is traced and
costs nothing per step. Unknown dims (``None``, e.g. the batch while tracing) are never rejected.

An expected shape is a tuple of named dims, einops style: a string is a free dim (``"batch"``),
an int is a fixed size, and ``names`` says what each position means::

    check_shape(u_hat, ("batch", 1152, 10, 16), "DigitCaps", "u_hat",
                names=("batch", "in_caps", "out_caps", "out_dim"))

    ShapeError in DigitCaps (u_hat): expected (batch, 1152, 10, 16), got (32, 1152, 16, 10)
    — dims 2 (out_caps), 3 (out_dim) differ
"""

from __future__ import annotations

from keras.backend import standardize_dtype

__all__ = ["ShapeError", "check_shape", "check_dims", "check_float", "static_shape", "format_shape"]


class ShapeError(ValueError):
    """A tensor or an input has the wrong shape, dtype or values; the message names the stage."""

    # AutoGraph re-raises errors from inside tf.function as its own StagingError unless the
    # class keeps Exception's constructor; this keeps `except capslib.ShapeError` working there.
    __init__ = Exception.__init__


def static_shape(x):
    """The static shape of ``x`` as a tuple of ints and ``None`` (any backend, NumPy too)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ShapeError(f"expected a tensor or array, got {type(x).__name__}")
    return tuple(None if d is None else int(d) for d in shape)


def format_shape(dims) -> str:
    """``("batch", 1152, 8)`` → ``"(batch, 1152, 8)"``; an unknown dim (``None``) prints as ``?``."""
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def check_shape(x, expected, stage: str, tensor: str, names=None):
    """Raise :class:`ShapeError` unless ``x``'s static shape matches ``expected``; return ``x``.

    expected: tuple of ints (fixed sizes) and strings (free dims, e.g. ``"batch"``); all strings
    checks the rank alone, e.g. before unpacking a shape.
    stage, tensor: where the check sits, e.g. ``"DigitCaps"``, ``"u_hat"``.
    names: optional meaning of each dim, shown next to the dims that differ.
    """
    check_dims(static_shape(x), expected, stage, tensor, names)
    return x


def check_dims(got, expected, stage: str, tensor: str, names=None):
    """:func:`check_shape` for a shape itself, e.g. the ``input_shape`` a layer's ``build`` gets."""
    got = tuple(None if d is None else int(d) for d in got)
    want = format_shape(expected)
    where = f"ShapeError in {stage} ({tensor})"
    if len(got) != len(expected):
        raise ShapeError(
            f"{where}: expected rank {len(expected)} {want}, got rank {len(got)} {format_shape(got)}"
        )
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if isinstance(e, int) and g is not None and g != e]
    if bad:
        label = (lambda i: f"{i} ({names[i]})") if names else str
        which = ", ".join(label(i) for i in bad)
        raise ShapeError(
            f"{where}: expected {want}, got {format_shape(got)} — dim{'s' if len(bad) > 1 else ''} {which} differ"
            + ("s" if len(bad) == 1 else "")
        )


def check_float(x, stage: str, tensor: str):
    """Raise :class:`ShapeError` unless ``x`` has a floating dtype (images, capsules, lengths)."""
    dtype = getattr(x, "dtype", None)
    try:
        dtype = standardize_dtype(dtype) if dtype is not None else ""
    except ValueError:
        dtype = str(dtype)
    if not any(k in dtype for k in ("float", "bfloat")):
        raise ShapeError(
            f"ShapeError in {stage} ({tensor}): expected a float tensor, got dtype {dtype or type(x).__name__}"
            + (" — scale uint8 images to [0, 1] floats first (capslib.data.scale_images)" if "int" in dtype else "")
        )
    return x
