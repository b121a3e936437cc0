"""Shared fixtures and the independent NumPy references the tests compare capslib against.

The references here are written from the paper (Sabour, Frosst & Hinton 2017, Eq. 1 and
Procedure 1), in float64, and import nothing from capslib.
"""

import os

# Before TensorFlow is imported anywhere (it reads these once, at import).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

np.random.seed(0)


# --------------------------------------------------------------------------- references


def squash_reference(s):
    """Eq. 1 for one vector, float64: v = |s|²/(1+|s|²) · s/|s|, and 0 for s = 0."""
    s = np.asarray(s, dtype=np.float64)
    n = math.sqrt(float(np.dot(s, s)))
    if n == 0.0:
        return np.zeros_like(s)
    return (n * n / (1.0 + n * n)) * (s / n)


def squash_reference_np(s, axis=-1):
    """Vectorised Eq. 1, float64, over ``axis``."""
    s = np.asarray(s, dtype=np.float64)
    n = np.linalg.norm(s, axis=axis, keepdims=True)
    safe = np.where(n == 0.0, 1.0, n)
    return (n * n / (1.0 + n * n)) * s / safe


def routing_reference_loop(u_hat, iterations, bias=None):
    """Procedure 1, written with plain Python loops over the examples, i and j (float64).

    u_hat: (batch, in_caps, out_caps, dim). bias: optional (out_caps, dim) added to each s_j.
    Returns (v, c): v (batch, out_caps, dim); c (batch, in_caps, out_caps), the couplings used
    in the last iteration.
    """
    u_hat = np.asarray(u_hat, dtype=np.float64)
    n_batch, n_in, n_out, dim = u_hat.shape
    v = np.zeros((n_batch, n_out, dim))
    c = np.zeros((n_batch, n_in, n_out))
    for n in range(n_batch):
        b = [[0.0] * n_out for _ in range(n_in)]                      # b_ij ← 0
        for _ in range(iterations):
            for i in range(n_in):                                     # c_i ← softmax(b_i)
                top = max(b[i])
                e = [math.exp(b[i][j] - top) for j in range(n_out)]
                total = sum(e)
                for j in range(n_out):
                    c[n, i, j] = e[j] / total
            for j in range(n_out):                                    # s_j ← Σ_i c_ij û_j|i
                s = np.zeros(dim)
                for i in range(n_in):
                    s = s + c[n, i, j] * u_hat[n, i, j]
                if bias is not None:
                    s = s + np.asarray(bias, dtype=np.float64)[j]
                v[n, j] = squash_reference(s)                         # v_j ← squash(s_j)
            for i in range(n_in):                                     # b_ij ← b_ij + û_j|i · v_j
                for j in range(n_out):
                    b[i][j] += float(np.dot(u_hat[n, i, j], v[n, j]))
    return v, c


def routing_reference_np(u_hat, iterations, bias=None):
    """Procedure 1 vectorised with NumPy, float64 (for the real 1152×10×16 size)."""
    u_hat = np.asarray(u_hat, dtype=np.float64)
    b = np.zeros(u_hat.shape[:3])
    for _ in range(iterations):
        e = np.exp(b - b.max(axis=2, keepdims=True))
        c = e / e.sum(axis=2, keepdims=True)                          # (batch, in, out)
        s = np.einsum("nij,nijd->njd", c, u_hat)                      # (batch, out, dim)
        if bias is not None:
            s = s + bias
        v = squash_reference_np(s)
        b = b + np.einsum("nijd,njd->nij", u_hat, v)
    return v, c


def routing_gradient_reference(u_hat, iterations, weights, bias=None, eps=1e-6):
    """d/dû and d/dbias of ``sum(v · weights)``, v = Procedure 1, by central differences in float64.

    Independent of any autodiff: it only evaluates :func:`routing_reference_np`. Meant for small
    cases (each entry costs two evaluations).
    """
    u = np.asarray(u_hat, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    b = None if bias is None else np.asarray(bias, dtype=np.float64)

    def f(u_, b_):
        return float(np.sum(routing_reference_np(u_, iterations, b_)[0] * w))

    def numeric(x, at):
        g = np.zeros_like(x)
        for k in np.ndindex(x.shape):
            x[k] += eps
            hi = at()
            x[k] -= 2 * eps
            lo = at()
            x[k] += eps
            g[k] = (hi - lo) / (2 * eps)
        return g

    du = numeric(u, lambda: f(u, b))
    db = None if b is None else numeric(b, lambda: f(u, b))
    return du, db


def margin_loss_reference(y, lengths, m_plus=0.9, m_minus=0.1, lam=0.5):
    """Eq. 4 summed over classes, averaged over the batch, with explicit loops (float64)."""
    y = np.asarray(y, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    per_example = []
    for n in range(y.shape[0]):
        total = 0.0
        for k in range(y.shape[1]):
            total += y[n, k] * max(0.0, m_plus - lengths[n, k]) ** 2
            total += lam * (1.0 - y[n, k]) * max(0.0, lengths[n, k] - m_minus) ** 2
        per_example.append(total)
    return float(np.mean(per_example))


def toy_dataset(n=64, size=14, seed=0, noise=0.1):
    """A tiny learnable set: class k is a bright size×size square at a class-specific place.

    Returns float32 images (n, 28, 28, 1) in [0, 1] and one-hot labels (n, 10).
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.uniform(0.0, noise, (n, 28, 28, 1)).astype("float32")
    for k in range(n):
        row, col = divmod(int(y[k]), 5)
        r0, c0 = row * (28 - size), col * (28 - size) // 4
        x[k, r0:r0 + size, c0:c0 + size, 0] = 1.0
    return x, np.eye(10, dtype="float32")[y]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model():
    """One default CapsNet for the whole session (8.2M parameters): tests must not train it."""
    import keras

    import capslib

    keras.utils.set_random_seed(1234)
    return capslib.CapsNet()


@pytest.fixture(scope="session")
def toy_data():
    return toy_dataset()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
