"""The two operations that make a capsule network: ``squash`` and ``dynamic_routing``.

Written with ``keras.ops`` only, so they run on TensorFlow, JAX and PyTorch alike.
"""

from __future__ import annotations

import keras
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
    unit, norm = _unit_and_norm(ops.cast(s, "float32"), axis)
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


def _unit_and_norm(s, axis=-1):
    """``(s / |s|, |s|)`` for float32 ``s``, without overflow, 0/0 or an infinite gradient."""
    # The result does not depend on the choice of scale, so no gradient needs to flow through it
    # (and on JAX one would overflow: d(s/scale)/d(scale) = -s/scale², with scale as small as 1e-30).
    scale = ops.stop_gradient(ops.maximum(ops.max(ops.abs(s), axis=axis, keepdims=True), _TINY))
    s_scaled = s / scale                                      # components in [-1, 1]
    r = ops.sqrt(ops.sum(ops.square(s_scaled), axis=axis, keepdims=True) + _EPS)
    return s_scaled / r, scale * r                            # s / |s| (0 where s = 0), |s|


def _squash_backward(s, dv):
    """The gradient of :func:`squash` (last axis): ``dL/ds`` from ``s`` and ``dv = dL/dv``.

    With n = |s| and e = s/n, squash is v = h(n)·s with h(n) = n/(1+n²), so
    ``ds = h·(dv + k·e(e·dv))`` with k = (1-n²)/(1+n²). Written, like squash, so that neither h
    nor k overflows: each is finite from n = 0 to float32's largest value.
    Shapes: ``s``, ``dv`` and the result ``(batch, out_caps, out_dim)``; float32.
    """
    unit, n = _unit_and_norm(s)
    small, big = ops.minimum(n, 1.0), ops.maximum(n, 1.0)
    inv2 = ops.square(1.0 / big)                              # 1/n² where n > 1
    h = ops.where(n <= 1.0, small / (1.0 + ops.square(small)), 1.0 / (big + 1.0 / big))
    k = ops.where(n <= 1.0, (1.0 - ops.square(small)) / (1.0 + ops.square(small)), (inv2 - 1.0) / (inv2 + 1.0))
    return h * (dv + k * unit * ops.sum(unit * dv, axis=-1, keepdims=True))


def capsule_length(v, axis=-1):
    """Euclidean length of each capsule: ``(batch, 10, 16)`` → ``(batch, 10)``, in float32.

    A tiny epsilon inside the sqrt keeps the gradient finite when a capsule is exactly zero. It
    must be far below |v|² of an untrained network (about 1e-12 with W ~ TN(0.01) and no bias, the
    ``init="keras"`` option): a larger
    one (1e-9 is common) hides those lengths and shrinks their gradient ~15× early in training.
    """
    v = ops.cast(v, "float32")
    return ops.sqrt(ops.sum(ops.square(v), axis=axis) + 1e-20)


def dynamic_routing(u_hat, iterations=3, return_coupling=False, out_major=False, bias=None,
                    autodiff=False):
    """Procedure 1 of the paper: routing by agreement.

    u_hat: predictions û_{j|i}, shape ``(batch, in_caps, out_caps, out_dim)``, e.g.
        ``(batch, 1152, 10, 16)``. With ``out_major=True`` the input is laid out
        ``(batch, out_caps, in_caps, out_dim)`` instead (what :class:`capslib.DigitCaps` makes:
        then s and the agreement are batched matrix products with no transpose, ~2× faster).
    iterations: r ≥ 1; the paper uses 3.
    bias: optional ``(out_caps, out_dim)`` added to every s_j, as in the official code.
    autodiff: differentiate the loop below with the framework's autodiff instead of the
        hand-written backward (:func:`_routing_backward`). First-order gradients are the same
        (tested); the hand-written one is faster and smaller. It is first-order only: for
        higher-order derivatives (PyTorch ``create_graph=True`` raises; JAX ``jvp``/``jacfwd``
        are refused by JAX) pass ``autodiff=True``. ``return_coupling=True`` always uses autodiff.
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
    _, n_out, _, out_dim = static_shape(u_hat)
    if bias is not None:
        check_shape(bias, (n_out, out_dim), "dynamic_routing", "bias", ("out_caps", "out_dim"))

    if return_coupling or autodiff:
        v, cs, _ = _routing_forward(u_hat, iterations, bias)
        if return_coupling:
            return v, ops.transpose(cs[-1], (0, 2, 1))        # c: (batch, in_caps, out_caps)
        return v
    # No bias is a zero bias (adding 0 changes nothing), so one custom-gradient function serves.
    bias = ops.zeros((n_out, out_dim), "float32") if bias is None else _as_tensor(bias)
    return _routed(iterations)(_as_tensor(u_hat), bias)


def _as_tensor(x):
    """``x`` as a plain tensor, which custom_gradient needs (TensorFlow refuses a variable)."""
    if isinstance(x, keras.Variable) or hasattr(x, "assign"):
        return ops.copy(x)                                    # reads the variable; gradients still reach it
    return ops.convert_to_tensor(x)


def _routing_forward(u_hat, iterations, bias=None):
    """The loop of Procedure 1 on out-major ``u_hat`` ``(batch, out_caps, in_caps, out_dim)``.

    Returns v ``(batch, out_caps, out_dim)`` and, per iteration, the couplings c
    ``(batch, out_caps, in_caps)`` and the pre-squash s ``(batch, out_caps, out_dim)``: what the
    hand-written backward needs (the only big tensor it keeps is û itself).
    """
    _, n_out, n_in, out_dim = static_shape(u_hat)
    stage = "dynamic_routing"
    names = ("batch", "out_caps", "in_caps", "out_dim")
    cs, ss = [], []
    # b[:, j, i] is b_ij; kept out-major like u_hat so the products below need no transposes.
    b = ops.zeros_like(u_hat[..., 0])                         # (batch, out_caps, in_caps)
    for r in range(iterations):
        c = ops.softmax(b, axis=1)                            # softmax over j, the output capsules
        check_shape(c, ("batch", n_out, n_in), stage, "c", names[:3])
        # s_j = Σ_i c_ij û_{j|i}: for each (batch, j) a (1, in) @ (in, dim) product.
        s = ops.squeeze(ops.matmul(c[:, :, None, :], u_hat), axis=2)
        if bias is not None:
            s = s + ops.cast(bias, s.dtype)                   # a float32 bias on 16-bit û stays 16-bit
        check_shape(s, ("batch", n_out, out_dim), stage, "s", ("batch", "out_caps", "out_dim"))
        v = squash(s)                                         # (batch, out_caps, out_dim)
        cs.append(c)
        ss.append(s)
        if r < iterations - 1:
            # agreement a_ij = û_{j|i} · v_j: for each (batch, j) an (in, dim) @ (dim, 1) product.
            b = b + ops.squeeze(ops.matmul(u_hat, v[..., None]), axis=-1)
            check_shape(b, ("batch", n_out, n_in), stage, "b", names[:3])
    check_shape(v, ("batch", n_out, out_dim), stage, "v", ("batch", "out_caps", "out_dim"))
    return v, cs, ss


def _routing_backward(u_hat, cs, ss, dv):
    """Reverse-mode pass of :func:`_routing_forward`: ``(dL/dû, [dL/ds per iteration])``.

    û is used 2r-1 times (r sums s_j, r-1 agreements), so autodiff builds dL/dû as 2r-1 outer
    products of û's size, (batch, 10, 1152, 16) each, and adds them up. Every one is a rank-1
    term, ``p ⊗ q`` with p ``(batch, out_caps, in_caps)`` and q ``(batch, out_caps, out_dim)``; here
    the p's and q's are stacked and dL/dû is ONE batched matmul with inner size 2r-1 — one
    tensor of û's size instead of 2r-1, and one pass over memory instead of 4r-2.
    """
    iterations = len(cs)
    work_dtype = u_hat.dtype                                  # the products with û run in its dtype
    ps, qs, dss = [], [], []
    db = None                # dL/db after iteration r's update: the sum over all later softmaxes
    for r in reversed(range(iterations)):
        c = cs[r]
        if db is not None:
            # b += û·v_r  ⇒  dv_r = Σ_i db_ji û_{j|i}, and dû gets db ⊗ v_r.
            dv = ops.squeeze(ops.matmul(ops.cast(db, work_dtype)[:, :, None, :], u_hat), axis=2)
            ps.append(db)
            qs.append(squash(ss[r]))                          # v_r again: (batch, 10, 16), cheap to redo
        ds = _squash_backward(ops.cast(ss[r], "float32"), ops.cast(dv, "float32"))
        dss.append(ds)
        # s_j = Σ_i c_ij û_{j|i}  ⇒  dc_ij = û_{j|i}·ds_j, and dû gets c ⊗ ds.
        ps.append(c)
        qs.append(ds)
        if r > 0:                                             # b before iteration 0 is a constant
            dc = ops.cast(ops.squeeze(ops.matmul(u_hat, ops.cast(ds, work_dtype)[..., None]), axis=-1), "float32")
            c32 = ops.cast(c, "float32")
            dlogits = c32 * (dc - ops.sum(c32 * dc, axis=1, keepdims=True))   # softmax over j
            db = dlogits if db is None else db + dlogits
    p = ops.stack([ops.cast(x, work_dtype) for x in ps], axis=-1)    # (batch, out_caps, in_caps, 2r-1)
    q = ops.stack([ops.cast(x, work_dtype) for x in qs], axis=-2)    # (batch, out_caps, 2r-1, out_dim)
    return ops.matmul(p, q), dss[::-1]                        # (batch, out_caps, in_caps, out_dim)


def _routed(iterations):
    """Routing on (u_hat, bias), differentiated by :func:`_routing_backward` on every backend."""
    on_torch = keras.backend.backend() == "torch"

    @ops.custom_gradient
    def route(u_hat, bias):
        v, cs, ss = _routing_forward(u_hat, iterations, bias)
        # TensorFlow and JAX call grad(dv) alone, so grad must keep û. PyTorch calls
        # grad(u_hat, bias, upstream=dv) with its saved copies, freed after the backward pass;
        # keeping û here as well would hold it (94 MB at batch 128) until the loss is dropped.
        # (Also on PyTorch: Keras reruns a forward that raised, so an error there shows twice.)
        kept_u_hat = None if on_torch else u_hat
        bias_dtype = bias.dtype

        def grad(*args, upstream=None):
            if upstream is None:
                u, dv = kept_u_hat, args[0]
            else:
                import torch
                if torch.is_grad_enabled():                   # backward(create_graph=True)
                    raise NotImplementedError(
                        "capslib.dynamic_routing: the hand-written routing backward is first-order "
                        "only; for higher-order gradients call dynamic_routing(..., autodiff=True)")
                u, dv = args[0], upstream
            du, dss = _routing_backward(u, cs, ss, dv)
            dbias = ops.sum(ops.stack(dss), axis=(0, 1))     # the bias is added to every s
            return du, ops.cast(dbias, bias_dtype)
        return v, grad
    return route
