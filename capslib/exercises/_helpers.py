"""Small NumPy references shared by the chapters' exercises (float64, written from the paper)."""

from __future__ import annotations

import numpy as np


def np_(x):
    """A tensor (any backend) as a NumPy array."""
    from keras import ops
    return np.asarray(ops.convert_to_numpy(x))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def squash64(s, axis=-1, eps=0.0):
    """Eq. 1 in float64 over ``axis``: |s|²/(1+|s|²) · s/|s|, exactly 0 for a zero vector."""
    s = np.asarray(s, np.float64)
    n2 = np.sum(s * s, axis=axis, keepdims=True)
    n = np.sqrt(n2 + eps)
    return np.where(n > 0, n2 / (1.0 + n2) * s / np.where(n > 0, n, 1.0), 0.0)


def squash_eps(s, axis=-1, eps=1e-12):
    """A squash with ``eps`` inside the sqrt (for mistakes: eps too big, axis wrong)."""
    n2 = np.sum(np.square(s), axis=axis, keepdims=True)
    return n2 / (1.0 + n2) * s / np.sqrt(n2 + eps)


def squash_grad64(s, w, axis=-1):
    """d(sum(squash(s) · w))/ds in float64, from the closed form (capslib.ops._squash_backward):
    with n = |s|, e = s/n, h = n/(1+n²), k = (1-n²)/(1+n²): ds = h·(w + k·e(e·w)); 0 at s = 0."""
    s = np.moveaxis(np.asarray(s, np.float64), axis, -1)
    w = np.moveaxis(np.asarray(w, np.float64), axis, -1)
    n = np.linalg.norm(s, axis=-1, keepdims=True)
    e = np.where(n > 0, s / np.where(n > 0, n, 1.0), 0.0)
    h = n / (1.0 + n * n)
    k = (1.0 - n * n) / (1.0 + n * n)
    g = h * (w + k * e * np.sum(e * w, axis=-1, keepdims=True))
    return np.moveaxis(g, -1, axis)


def routing64(u_hat, iterations, bias=None):
    """Procedure 1 in float64, paper layout (batch, in_caps, out_caps, dim) → (v, c of the last iteration)."""
    u_hat = np.asarray(u_hat, np.float64)
    b = np.zeros(u_hat.shape[:3])
    for _ in range(iterations):
        c = softmax(b, axis=2)
        s = np.einsum("bij,bijd->bjd", c, u_hat)
        if bias is not None:
            s = s + bias
        v = squash64(s)
        b = b + np.einsum("bijd,bjd->bij", u_hat, v)
    return v, c


def value_and_grad(fn, s, w, ieee=False, **kwargs):
    """(value, d sum(fn(s)·w)/ds, fn's raw output) on the backend Keras runs on; the gradient is None when
    fn's output is not connected to its input (a NumPy function, a tensor of another library). Raises what
    fn raises.

    ieee=True: differentiate as JAX and PyTorch do, where 0·∞ is NaN. TensorFlow's gradients of sqrt and
    rsqrt alone return 0 where the incoming gradient is 0, even at 0 where the derivative is infinite; for
    the duration of the call they are replaced by the plain formulas, so that a checker's verdict on a
    gradient does not depend on the backend."""
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        with _ieee_sqrt_gradients(ieee):
            t = tf.constant(s)
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = fn(t, **kwargs)
                try:
                    total = tf.reduce_sum(tf.cast(tf.convert_to_tensor(y), tf.float32) * w)
                except Exception:  # noqa: BLE001 — not a TensorFlow value (another library's tensor)
                    return np_(y), None, y
            g = tape.gradient(total, t)
        return np_(y), (None if g is None else np_(g)), y
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        y = fn(jnp.asarray(s), **kwargs)
        try:
            g = jax.grad(lambda z: jnp.sum(jnp.asarray(fn(z, **kwargs), jnp.float32) * w))(jnp.asarray(s))
        except Exception:  # noqa: BLE001 — a NumPy function (or another library's) cannot be traced
            g = None
        return np_(y), (None if g is None else np_(g)), y
    import torch
    t = torch.tensor(s, requires_grad=True)
    y = fn(t, **kwargs)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        return np_(y), None, y
    (y.float() * torch.tensor(w)).sum().backward()
    return np_(y.detach()), np_(t.grad), y


class _ieee_sqrt_gradients:
    """Within the block, TensorFlow differentiates Sqrt and Rsqrt by their plain formulas
    (0.5·g/y and −0.5·g·y³), so 0·∞ gives NaN as on JAX and PyTorch (see value_and_grad)."""

    def __init__(self, active):
        self.active, self.saved = active, {}

    def __enter__(self):
        if not self.active:
            return self
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.framework import registry as tf_registry
        registry = tf_ops._gradient_registry._registry          # op type → {_TYPE_TAG: gradient function, …}
        tag = tf_registry._TYPE_TAG

        def sqrt_grad(op, grad):
            return grad * (0.5 / op.outputs[0])

        def rsqrt_grad(op, grad):
            y = op.outputs[0]
            return grad * (-0.5 * y * y * y)

        for name, fn in (("Sqrt", sqrt_grad), ("Rsqrt", rsqrt_grad)):
            self.saved[name] = registry[name]
            registry[name] = {**registry[name], tag: fn}
        return self

    def __exit__(self, *exc):
        if self.saved:
            from tensorflow.python.framework import ops as tf_ops
            tf_ops._gradient_registry._registry.update(self.saved)
        return False
