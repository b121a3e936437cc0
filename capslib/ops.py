"""The two operations that make a capsule network: ``squash`` and ``dynamic_routing``.

Written with ``keras.ops`` only, so they run on TensorFlow, JAX and PyTorch alike.
"""

from __future__ import annotations

from keras import ops

from .shapes import ShapeError, check_float, check_shape, static_shape

__all__ = ["squash", "dynamic_routing", "capsule_length"]

# Smallest scale we divide by: a zero vector stays 0/1e-30 = 0 instead of 0/0.
_TINY = 1e-30
# Keeps sqrt away from 0, where its gradient is infinite. Added to |s/scale|² ≥ 1 (or 0), so it
# changes a non-zero result by at most ~5e-13, far below float32 resolution.
_EPS = 1e-12


def squash(s, axis=-1):
    """Eq. 1 of the paper: ``v = |s|² / (1 + |s|²) · s / |s|``, taken over ``axis``.

    Shape: any, e.g. ``(batch, 10, 16)`` → ``(batch, 10, 16)``. Keeps direction; the norm becomes
    ``|s|² / (1 + |s|²)`` < 1, so a capsule's length can be read as a probability.

    The naive formula is NaN at ``s = 0`` (0/0, and sqrt's gradient is infinite) and overflows in
    float32 once ``|s|² > 3e38``. So we first divide by the largest |component| (``scale``),
    which puts |s/scale| in [1, sqrt(dim)], and write the gain ``|s|²/(1+|s|²)`` in a form that
    cannot overflow. Finite value and gradient from ``|s| = 0`` to 1e30 and beyond.
    Computed in float32 even under a float16/bfloat16 policy.
    """
    dtype = s.dtype
    s = ops.cast(s, "float32")
    # The result does not depend on the choice of scale, so no gradient needs to flow through it
    # (and on JAX one would overflow: d(s/scale)/d(scale) = -s/scale², with scale as small as 1e-30).
    scale = ops.stop_gradient(ops.maximum(ops.max(ops.abs(s), axis=axis, keepdims=True), _TINY))
    s_scaled = s / scale                                      # components in [-1, 1]
    r = ops.sqrt(ops.sum(ops.square(s_scaled), axis=axis, keepdims=True) + _EPS)
    unit = s_scaled / r                                       # s / |s|   (0 where s = 0)
    norm = scale * r                                          # |s|
    # gain = n²/(1+n²) = 1/(1+1/n²); each form is used where it cannot overflow, and both
    # branches stay finite everywhere so the unused one cannot poison the gradient with NaN.
    small = ops.minimum(norm, 1.0)
    big = ops.maximum(norm, 1.0)
    gain = ops.where(
        norm <= 1.0,
        ops.square(small) / (1.0 + ops.square(small)),
        1.0 / (1.0 + ops.square(1.0 / big)),
    )
    return ops.cast(gain * unit, dtype)


def capsule_length(v, axis=-1):
    """Euclidean length of each capsule: ``(batch, 10, 16)`` → ``(batch, 10)``, in float32.

    A tiny epsilon inside the sqrt keeps the gradient finite when a capsule is exactly zero. It
    must be far below |v|² of an untrained network (about 1e-12 with W ~ N(0, 0.01²)): a larger
    one (1e-9 is common) hides those lengths and shrinks their gradient ~15× early in training.
    """
    v = ops.cast(v, "float32")
    return ops.sqrt(ops.sum(ops.square(v), axis=axis) + 1e-20)


def dynamic_routing(u_hat, iterations=3, return_coupling=False, out_major=False, bias=None):
    """Procedure 1 of the paper: routing by agreement.

    u_hat: predictions û_{j|i}, shape ``(batch, in_caps, out_caps, out_dim)``, e.g.
        ``(batch, 1152, 10, 16)``. With ``out_major=True`` the input is laid out
        ``(batch, out_caps, in_caps, out_dim)`` instead (what :class:`capslib.DigitCaps` makes:
        then s and the agreement are batched matrix products with no transpose, ~2× faster).
    iterations: r ≥ 1; the paper uses 3.
    bias: optional ``(out_caps, out_dim)`` added to every s_j, as in the official code.
    Returns v, shape ``(batch, out_caps, out_dim)``; with ``return_coupling=True`` returns
    ``(v, c)``, c the couplings of the last iteration, shape ``(batch, in_caps, out_caps)``.

    For r iterations::

        b_ij = 0                                  (batch, in_caps, out_caps)  fresh every call
        repeat r times:
            c_i  = softmax_j(b_i)                 each input capsule splits its vote over j
            s_j  = Σ_i c_ij û_{j|i}               (batch, out_caps, out_dim)
            v_j  = squash(s_j)
            b_ij = b_ij + û_{j|i} · v_j           a dot product over out_dim

    Gradients flow through every iteration (through û, c and b), as in the paper's official
    code; nothing is wrapped in ``stop_gradient``. The logits b are a local tensor, never a
    variable, so they start at zero for every example and every forward pass.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ShapeError(f"ShapeError in dynamic_routing (iterations): expected an int ≥ 1, got {iterations!r}")
    check_float(u_hat, "dynamic_routing", "u_hat")
    layout = ("batch", "out_caps", "in_caps", "out_dim") if out_major else ("batch", "in_caps", "out_caps", "out_dim")
    check_shape(u_hat, layout, "dynamic_routing", "u_hat")
    if not out_major:
        u_hat = ops.transpose(u_hat, (0, 2, 1, 3))            # → (batch, out_caps, in_caps, out_dim)
    _, n_out, n_in, out_dim = static_shape(u_hat)
    stage = "dynamic_routing"
    names = ("batch", "out_caps", "in_caps", "out_dim")

    # b[:, j, i] is b_ij; kept out-major like u_hat so the products below need no transposes.
    b = ops.zeros_like(u_hat[..., 0])                         # (batch, out_caps, in_caps)
    for r in range(iterations):
        c = ops.softmax(b, axis=1)                            # softmax over j, the output capsules
        check_shape(c, ("batch", n_out, n_in), stage, "c", names[:3])
        # s_j = Σ_i c_ij û_{j|i}: for each (batch, j) a (1, in) @ (in, dim) product.
        s = ops.squeeze(ops.matmul(c[:, :, None, :], u_hat), axis=2)
        if bias is not None:
            s = s + bias
        check_shape(s, ("batch", n_out, out_dim), stage, "s", ("batch", "out_caps", "out_dim"))
        v = squash(s)                                         # (batch, out_caps, out_dim)
        if r < iterations - 1:
            # agreement a_ij = û_{j|i} · v_j: for each (batch, j) an (in, dim) @ (dim, 1) product.
            b = b + ops.squeeze(ops.matmul(u_hat, v[..., None]), axis=-1)
            check_shape(b, ("batch", n_out, n_in), stage, "b", names[:3])
    check_shape(v, ("batch", n_out, out_dim), stage, "v", ("batch", "out_caps", "out_dim"))
    if return_coupling:
        return v, ops.transpose(c, (0, 2, 1))                 # (batch, in_caps, out_caps)
    return v
