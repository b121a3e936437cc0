"""squash, dynamic_routing and capsule_length against independent float64 NumPy references.

The references (conftest.py) are written from the paper: Eq. 1 for squash and Procedure 1 for
routing, with plain Python loops over i and j.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import capslib
from capslib import capsule_length, dynamic_routing, squash
from conftest import (routing_gradient_reference, routing_reference_loop, routing_reference_np, squash_reference,
                      squash_reference_np)

TOL = dict(rtol=1e-5, atol=1e-5)


def to_np(x):
    return keras.ops.convert_to_numpy(x)


# --------------------------------------------------------------------------- the references


def test_references_agree_with_each_other(rng):
    """The loop reference and the vectorised one (used at full size) are the same algorithm."""
    u = rng.normal(0, 1, (2, 12, 4, 5))
    bias = rng.normal(0, 0.5, (4, 5))
    for r in (1, 2, 3):
        for b in (None, bias):
            v1, c1 = routing_reference_loop(u, r, b)
            v2, c2 = routing_reference_np(u, r, b)
            np.testing.assert_allclose(v1, v2, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(c1, c2, rtol=1e-12, atol=1e-12)


def test_squash_reference_known_values():
    # |s| = 5 → length 25/26, same direction
    np.testing.assert_allclose(squash_reference([3.0, 4.0]), np.array([3.0, 4.0]) / 5 * 25 / 26)
    np.testing.assert_allclose(squash_reference([0.0, 0.0]), [0.0, 0.0])


# --------------------------------------------------------------------------- squash


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_squash_matches_reference(rng, dtype):
    s = (rng.normal(0, 1, (3, 10, 16)) * rng.choice([1e-3, 0.1, 1.0, 10.0, 1e3], (3, 10, 1))).astype(dtype)
    v = to_np(squash(s))
    assert v.shape == s.shape and v.dtype == np.dtype(dtype)
    np.testing.assert_allclose(v, squash_reference_np(s), **TOL)


def test_squash_other_axis(rng):
    s = rng.normal(0, 2, (4, 8, 6)).astype("float32")
    v = to_np(squash(s, axis=1))
    np.testing.assert_allclose(v, squash_reference_np(s, axis=1), **TOL)
    assert not np.allclose(v, squash_reference_np(s, axis=-1), **TOL)


def test_squash_of_zero_is_zero_with_finite_zero_gradient():
    s = tf.Variable(np.zeros((2, 16), np.float32))
    w = np.random.default_rng(0).normal(size=(2, 16)).astype("float32")
    with tf.GradientTape() as tape:
        v = squash(s)
        y = tf.reduce_sum(v * w)
    g = tape.gradient(y, s).numpy()
    assert np.array_equal(v.numpy(), np.zeros((2, 16), np.float32))
    assert np.isfinite(g).all()
    # v ≈ |s| s near 0, so the true derivative at 0 is 0
    np.testing.assert_allclose(g, 0.0, atol=1e-6)


def test_squash_large_and_small_values_exactly():
    s = np.array([[1e30, 0.0, 0.0], [0.0, -1e-30, 0.0], [3e38, 3e38, -3e38], [1e-45, 0.0, 0.0]], np.float32)
    v = to_np(squash(s))
    assert np.isfinite(v).all()
    np.testing.assert_allclose(v[0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(v[1], 0.0, atol=1e-30)
    np.testing.assert_allclose(v[2], np.array([1.0, 1.0, -1.0]) / math.sqrt(3), atol=1e-6)


def _direction(seed, dim):
    d = np.random.default_rng(seed).normal(size=dim)
    while np.linalg.norm(d) < 1e-3:
        d = d + 1.0
    return d / np.linalg.norm(d)


def _check_squash_vector(direction, magnitude):
    s64 = direction * magnitude
    s = s64.astype(np.float32)[None]                       # (1, dim)
    v = to_np(squash(s))[0].astype(np.float64)
    assert np.isfinite(v).all(), (magnitude, v)
    n = float(np.linalg.norm(s.astype(np.float64)))
    expected_len = n * n / (1.0 + n * n)
    length = float(np.linalg.norm(v))
    # the length is |s|²/(1+|s|²) (below ~1e-37 float32 can only give 0 or a subnormal)
    np.testing.assert_allclose(length, expected_len, rtol=1e-5, atol=1e-37)
    assert length <= 1.0 + 1e-6
    if n <= 100:
        assert length < 1.0
    if length > 1e-30:
        # same direction: cosine 1, and the same sign on every component that is not negligible
        cosine = float(np.dot(v, s[0].astype(np.float64)) / (length * n))
        assert cosine == pytest.approx(1.0, abs=1e-6)
        big = np.abs(s[0]) > 1e-3 * n
        assert (np.sign(v[big]) == np.sign(s[0][big])).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 16), log_mag=st.floats(-30, 30))
@example(seed=0, dim=16, log_mag=30.0)
@example(seed=0, dim=16, log_mag=-30.0)
@example(seed=1, dim=1, log_mag=0.0)
@example(seed=2, dim=1, log_mag=30.0)
def test_squash_property_value(seed, dim, log_mag):
    _check_squash_vector(_direction(seed, dim), 10.0 ** log_mag)


def _tape_gradient(s_np, w_np):
    s = tf.Variable(s_np)
    with tf.GradientTape() as tape:
        v = squash(s)
        y = tf.reduce_sum(v * w_np)
    return tape.gradient(y, s).numpy(), v.numpy()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 16), log_mag=st.floats(-30, 30))
@example(seed=0, dim=16, log_mag=30.0)
@example(seed=0, dim=16, log_mag=-30.0)
@example(seed=3, dim=1, log_mag=-30.0)
def test_squash_property_gradient_is_finite(seed, dim, log_mag):
    s = (_direction(seed, dim) * 10.0 ** log_mag).astype(np.float32)[None]
    w = np.random.default_rng(seed + 1).normal(size=(1, dim)).astype(np.float32)
    g, v = _tape_gradient(s, w)
    assert np.isfinite(v).all()
    assert np.isfinite(g).all(), (log_mag, g)
    # |dv/ds| ≤ 1 in operator norm for squash (its Lipschitz constant is < 1), so |g| ≤ |w|
    assert np.linalg.norm(g) <= np.linalg.norm(w) * (1 + 1e-4)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 16),
       log_mags=st.lists(st.floats(-30, 30), min_size=16, max_size=16))
def test_squash_property_mixed_scale_components(seed, dim, log_mags):
    """Components of wildly different sizes in one vector (1e30 next to 1e-30)."""
    signs = np.where(np.random.default_rng(seed).random(dim) < 0.5, -1.0, 1.0)
    s = (signs * 10.0 ** np.array(log_mags[:dim])).astype(np.float32)[None]
    w = np.random.default_rng(seed + 1).normal(size=(1, dim)).astype(np.float32)
    g, v = _tape_gradient(s, w)
    assert np.isfinite(v).all() and np.isfinite(g).all()
    np.testing.assert_allclose(v[0], squash_reference_np(s[0].astype(np.float64)), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 16), log_mag=st.floats(-2, 2))
def test_squash_gradient_matches_finite_differences(seed, dim, log_mag):
    """The gradient is not only finite but right: compare with central differences of Eq. 1."""
    s64 = _direction(seed, dim) * 10.0 ** log_mag
    w = np.random.default_rng(seed + 1).normal(size=dim)
    g, _ = _tape_gradient(s64.astype(np.float32)[None], w.astype(np.float32)[None])
    h = 1e-6 * max(1.0, np.linalg.norm(s64))
    numeric = np.array([
        (np.dot(squash_reference(s64 + h * e), w) - np.dot(squash_reference(s64 - h * e), w)) / (2 * h)
        for e in np.eye(dim)
    ])
    np.testing.assert_allclose(g[0], numeric, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- capsule_length


def test_capsule_length(rng):
    v = rng.normal(0, 1, (3, 10, 16)).astype("float32")
    np.testing.assert_allclose(to_np(capsule_length(v)), np.linalg.norm(v, axis=-1), rtol=1e-5)
    assert to_np(capsule_length(v)).shape == (3, 10)
    assert to_np(capsule_length(v, axis=1)).shape == (3, 16)


def test_capsule_length_gradient_finite_at_zero():
    v = tf.Variable(np.zeros((2, 10, 16), np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(capsule_length(v))
    assert np.isfinite(tape.gradient(y, v).numpy()).all()


# --------------------------------------------------------------------------- dynamic_routing


@pytest.fixture
def small_u_hat(rng):
    # sizes from the issue: batch 2, 12 input capsules, 4 output capsules, dim 5
    return rng.normal(0, 1, (2, 12, 4, 5)).astype("float32")


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_routing_matches_loop_reference(small_u_hat, iterations):
    v, c = dynamic_routing(small_u_hat, iterations, return_coupling=True)
    v_ref, c_ref = routing_reference_loop(small_u_hat, iterations)
    assert tuple(v.shape) == (2, 4, 5)
    assert tuple(c.shape) == (2, 12, 4)
    np.testing.assert_allclose(to_np(v), v_ref, **TOL)
    np.testing.assert_allclose(to_np(c), c_ref, **TOL)
    np.testing.assert_allclose(to_np(c).sum(axis=-1), 1.0, atol=1e-6)


def test_routing_default_is_three_iterations(small_u_hat):
    v_ref, _ = routing_reference_loop(small_u_hat, 3)
    np.testing.assert_allclose(to_np(dynamic_routing(small_u_hat)), v_ref, **TOL)


def test_routing_iterations_matter(small_u_hat):
    """Guard against a routing that ignores its iteration count or never updates b."""
    v1 = to_np(dynamic_routing(small_u_hat, 1))
    v3 = to_np(dynamic_routing(small_u_hat, 3))
    assert np.abs(v1 - v3).max() > 1e-2
    _, c1 = dynamic_routing(small_u_hat, 1, return_coupling=True)
    np.testing.assert_allclose(to_np(c1), 0.25, atol=1e-7)  # b = 0 → uniform couplings
    _, c3 = dynamic_routing(small_u_hat, 3, return_coupling=True)
    assert np.abs(to_np(c3) - 0.25).max() > 1e-2


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_float64_input(small_u_hat, iterations):
    v = dynamic_routing(small_u_hat.astype("float64"), iterations)
    np.testing.assert_allclose(to_np(v), routing_reference_loop(small_u_hat, iterations)[0], **TOL)


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_out_major_gives_same_result(small_u_hat, iterations):
    v, c = dynamic_routing(small_u_hat, iterations, return_coupling=True)
    transposed = np.ascontiguousarray(small_u_hat.transpose(0, 2, 1, 3))   # (batch, out, in, dim)
    v_t, c_t = dynamic_routing(transposed, iterations, return_coupling=True, out_major=True)
    np.testing.assert_allclose(to_np(v_t), to_np(v), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_np(c_t), to_np(c), rtol=1e-6, atol=1e-6)
    assert tuple(c_t.shape) == (2, 12, 4)   # couplings come back (batch, in, out) either way


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_bias_adds_to_s(small_u_hat, rng, iterations):
    bias = rng.normal(0, 0.5, (4, 5)).astype("float32")
    v, c = dynamic_routing(small_u_hat, iterations, return_coupling=True, bias=bias)
    v_ref, c_ref = routing_reference_loop(small_u_hat, iterations, bias=bias)
    np.testing.assert_allclose(to_np(v), v_ref, **TOL)
    np.testing.assert_allclose(to_np(c), c_ref, **TOL)
    assert np.abs(to_np(v) - routing_reference_loop(small_u_hat, iterations)[0]).max() > 1e-2
    v0 = dynamic_routing(small_u_hat, iterations, bias=np.zeros((4, 5), np.float32))
    np.testing.assert_allclose(to_np(v0), to_np(dynamic_routing(small_u_hat, iterations)), rtol=1e-6, atol=1e-7)


def test_routing_with_one_iteration_is_mean_then_squash(small_u_hat):
    s = small_u_hat.astype(np.float64).sum(axis=1) / 4          # c_ij = 1/4 for the 4 outputs
    np.testing.assert_allclose(to_np(dynamic_routing(small_u_hat, 1)), squash_reference_np(s), **TOL)


def test_routing_examples_are_independent(small_u_hat, rng):
    v = to_np(dynamic_routing(small_u_hat, 3))
    for k in range(2):
        np.testing.assert_allclose(to_np(dynamic_routing(small_u_hat[k:k + 1], 3))[0], v[k], rtol=1e-6, atol=1e-6)
    other = small_u_hat.copy()
    other[1] = rng.normal(0, 3, other[1].shape)
    np.testing.assert_allclose(to_np(dynamic_routing(other, 3))[0], v[0], rtol=1e-6, atol=1e-6)


def test_routing_is_stateless(small_u_hat):
    first = to_np(dynamic_routing(small_u_hat, 3))
    second = to_np(dynamic_routing(small_u_hat, 3))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_real_size(rng, iterations):
    """(batch 2, 1152, 10, 16): capslib against the vectorised float64 reference."""
    # û with a class-dependent mean so that routing really moves the couplings
    u = rng.normal(0, 0.05, (2, 1152, 10, 16)) + rng.normal(0, 0.02, (1, 1, 10, 16))
    u = u.astype("float32")
    v, c = dynamic_routing(u, iterations, return_coupling=True)
    v_ref, c_ref = routing_reference_np(u, iterations)
    assert tuple(v.shape) == (2, 10, 16) and tuple(c.shape) == (2, 1152, 10)
    np.testing.assert_allclose(to_np(v), v_ref, **TOL)
    np.testing.assert_allclose(to_np(c), c_ref, **TOL)
    np.testing.assert_allclose(to_np(c).sum(axis=-1), 1.0, atol=1e-5)
    if iterations == 3:
        assert np.abs(c_ref - 0.1).max() > 1e-3     # the case does exercise the routing
        # and out-major on the transposed input is the same computation
        v_t, c_t = dynamic_routing(np.ascontiguousarray(u.transpose(0, 2, 1, 3)), 3,
                                   return_coupling=True, out_major=True)
        np.testing.assert_allclose(to_np(v_t), v_ref, **TOL)
        np.testing.assert_allclose(to_np(c_t), c_ref, **TOL)


def test_routing_gradient_flows_and_is_finite(small_u_hat):
    u = tf.Variable(small_u_hat)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(capsule_length(dynamic_routing(u, 3)))
    g = tape.gradient(y, u).numpy()
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_routing_gradient_of_zero_input_is_finite():
    u = tf.Variable(np.zeros((2, 12, 4, 5), np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(capsule_length(dynamic_routing(u, 3)))
    assert np.isfinite(tape.gradient(y, u).numpy()).all()


# --------------------------------------------------------------------------- the hand-written backward


def _routing_grads(u, iterations, weights, bias=None, out_major=False, autodiff=False):
    """(loss, dL/dû, dL/dbias) for L = sum(v · weights), by tf.GradientTape through capslib."""
    u = tf.constant(u)
    b = None if bias is None else tf.constant(bias)
    with tf.GradientTape() as tape:
        tape.watch(u)
        if b is not None:
            tape.watch(b)
        v = dynamic_routing(u, iterations, out_major=out_major, bias=b, autodiff=autodiff)
        loss = tf.reduce_sum(v * weights)
    du, db = tape.gradient(loss, [u, b]) if b is not None else (tape.gradient(loss, u), None)
    return float(loss), du.numpy(), None if db is None else db.numpy()


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_routing_backward_matches_finite_differences_of_the_reference(small_u_hat, rng, iterations, with_bias):
    """The default (hand-written) backward against central differences of the float64 reference."""
    weights = rng.normal(0, 1, (2, 4, 5)).astype("float32")
    bias = rng.normal(0, 0.5, (4, 5)).astype("float32") if with_bias else None
    _, du, db = _routing_grads(small_u_hat, iterations, weights, bias)
    du_ref, db_ref = routing_gradient_reference(small_u_hat, iterations, weights, bias)
    assert np.abs(du_ref).max() > 1e-2                       # a gradient worth comparing
    np.testing.assert_allclose(du, du_ref, rtol=1e-4, atol=1e-5)
    if with_bias:
        np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("out_major", [False, True])
def test_routing_backward_matches_autodiff(small_u_hat, rng, iterations, with_bias, out_major):
    u = np.ascontiguousarray(small_u_hat.transpose(0, 2, 1, 3)) if out_major else small_u_hat
    weights = rng.normal(0, 1, (2, 4, 5)).astype("float32")
    bias = rng.normal(0, 0.5, (4, 5)).astype("float32") if with_bias else None
    loss_h, du_h, db_h = _routing_grads(u, iterations, weights, bias, out_major)
    loss_a, du_a, db_a = _routing_grads(u, iterations, weights, bias, out_major, autodiff=True)
    assert loss_h == loss_a                                   # the same forward either way
    np.testing.assert_allclose(du_h, du_a, rtol=1e-5, atol=1e-6)
    if with_bias:
        np.testing.assert_allclose(db_h, db_a, rtol=1e-5, atol=1e-6)


def test_routing_backward_real_size_matches_autodiff_under_tf_function(rng):
    """(batch 4, 10, 1152, 16) out-major, as DigitCaps calls it, inside tf.function."""
    u = (rng.normal(0, 0.05, (4, 10, 1152, 16)) + rng.normal(0, 0.02, (1, 10, 1, 16))).astype("float32")
    weights = tf.constant(rng.normal(0, 1, (4, 10, 16)).astype("float32"))

    @tf.function(jit_compile=False)
    def grad(x, autodiff):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(dynamic_routing(x, 3, out_major=True, autodiff=autodiff) * weights)
        return tape.gradient(loss, x)

    x = tf.constant(u)
    hand, auto = grad(x, False).numpy(), grad(x, True).numpy()
    assert np.isfinite(hand).all()
    np.testing.assert_allclose(hand, auto, rtol=1e-4, atol=1e-7 * np.abs(auto).max())


def _squash_vjp_reference(s, dv):
    """Eq. 1's vector-Jacobian product in float64: v = h(n)·s, h = n/(1+n²), n = |s|, so
    ds = h·dv + s·h'(n)/n·(s·dv) with h' = (1-n²)/(1+n²)²; and 0 at s = 0."""
    s, dv = np.asarray(s, np.float64), np.asarray(dv, np.float64)
    n = np.linalg.norm(s, axis=-1, keepdims=True)
    safe = np.where(n == 0, 1.0, n)
    h = n / (1 + n * n)
    dh_over_n = np.where(n == 0, 0.0, (1 - n * n) / (1 + n * n) ** 2 / safe)
    return h * dv + s * dh_over_n * np.sum(s * dv, axis=-1, keepdims=True)


@pytest.mark.parametrize("log_mag", [None, -30, -20, -5, 0, 1, 5, 20, 30])
def test_squash_backward_matches_the_exact_gradient(rng, log_mag):
    """capslib.ops._squash_backward (used by the routing backward) is squash's exact gradient,
    finite from |s| = 0 to 1e30; and the same as autodiff through squash where float32's
    intermediate n² neither underflows nor overflows."""
    from capslib.ops import _squash_backward
    direction = rng.normal(0, 1, (3, 10, 16))
    scale = 0.0 if log_mag is None else 10.0 ** log_mag
    s_np = (direction * scale * rng.uniform(0.5, 2.0, (3, 10, 1))).astype("float32")
    dv_np = rng.normal(0, 1, (3, 10, 16)).astype("float32")
    hand = to_np(_squash_backward(tf.constant(s_np), tf.constant(dv_np)))
    exact = _squash_vjp_reference(s_np, dv_np)
    assert np.isfinite(hand).all()
    # (at s = 0 both are 0 up to ~1e-36: capslib's norm there is 1e-30·sqrt(1e-12), not exactly 0)
    np.testing.assert_allclose(hand, exact, rtol=1e-4, atol=1e-5 * max(np.abs(exact).max(), 1e-30))
    if log_mag is not None and abs(log_mag) <= 5:
        s = tf.constant(s_np)
        with tf.GradientTape() as tape:
            tape.watch(s)
            v = squash(s)
        auto = tape.gradient(v, s, output_gradients=tf.constant(dv_np)).numpy()
        np.testing.assert_allclose(hand, auto, rtol=1e-5, atol=1e-6 * np.abs(auto).max())


def test_routing_backward_under_bfloat16_is_close_to_float32(small_u_hat, rng):
    """Mixed precision: û in bfloat16 gives a bfloat16 gradient close to the float32 one."""
    weights = rng.normal(0, 1, (2, 4, 5)).astype("float32")
    _, du32, _ = _routing_grads(small_u_hat, 3, weights)
    u16 = tf.constant(small_u_hat, dtype=tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(u16)
        loss = tf.reduce_sum(tf.cast(dynamic_routing(u16, 3), tf.float32) * weights)
    du16 = tape.gradient(loss, u16)
    assert du16.dtype == tf.bfloat16
    du16 = tf.cast(du16, tf.float32).numpy()
    assert np.isfinite(du16).all()
    np.testing.assert_allclose(du16, du32, rtol=0.05, atol=0.02 * np.abs(du32).max())


def test_routing_coupling_path_is_differentiable(small_u_hat):
    """return_coupling=True runs the same loop under autodiff; its gradient equals the default's."""
    u = tf.constant(small_u_hat)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(u)
        v_c, _ = dynamic_routing(u, 3, return_coupling=True)
        v = dynamic_routing(u, 3)
        a, b = tf.reduce_sum(tf.square(v_c)), tf.reduce_sum(tf.square(v))
    np.testing.assert_allclose(tape.gradient(a, u).numpy(), tape.gradient(b, u).numpy(), rtol=1e-5, atol=1e-7)


def test_routing_bias_of_wrong_shape_is_named(small_u_hat):
    with pytest.raises(capslib.ShapeError, match=r"dynamic_routing \(bias\): expected \(4, 5\), got \(5, 4\)"):
        dynamic_routing(small_u_hat, 3, bias=np.zeros((5, 4), np.float32))


def test_routing_backward_second_order_matches_autodiff_on_tensorflow(small_u_hat, rng):
    """On TensorFlow the hand-written backward is itself differentiable (its ops are recorded)."""
    weights = rng.normal(0, 1, (2, 4, 5)).astype("float32")

    def grad_of_grad_norm(autodiff):
        u = tf.constant(small_u_hat)
        with tf.GradientTape() as outer:
            outer.watch(u)
            with tf.GradientTape() as inner:
                inner.watch(u)
                loss = tf.reduce_sum(dynamic_routing(u, 3, autodiff=autodiff) * weights)
            g = inner.gradient(loss, u)
            g2 = tf.reduce_sum(tf.square(g))
        return outer.gradient(g2, u).numpy()

    hand, auto = grad_of_grad_norm(False), grad_of_grad_norm(True)
    np.testing.assert_allclose(hand, auto, rtol=1e-4, atol=1e-6 * np.abs(auto).max())


@pytest.mark.parametrize("kind", ["tf.Variable", "keras.Variable"])
def test_routing_of_a_variable_gets_its_gradient(small_u_hat, kind):
    """A variable passed straight in (out-major, so nothing else turns it into a tensor first)."""
    u_out = np.ascontiguousarray(small_u_hat.transpose(0, 2, 1, 3))
    var = tf.Variable(u_out) if kind == "tf.Variable" else keras.Variable(u_out)
    target = var if kind == "tf.Variable" else var.value
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(dynamic_routing(var, 3, out_major=True)))
    g = tape.gradient(loss, target)
    with tf.GradientTape() as tape:
        x = tf.constant(u_out)
        tape.watch(x)
        loss_ref = tf.reduce_sum(tf.square(dynamic_routing(x, 3, out_major=True, autodiff=True)))
    np.testing.assert_allclose(g.numpy(), tape.gradient(loss_ref, x).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("autodiff", [False, True])
def test_routing_bfloat16_u_hat_with_float32_bias(small_u_hat, rng, autodiff):
    """Mixed precision: v stays bfloat16 and the bias's gradient comes back float32, either path."""
    u = tf.constant(small_u_hat, dtype=tf.bfloat16)
    bias = tf.constant(rng.normal(0, 0.5, (4, 5)).astype("float32"))
    weights = rng.normal(0, 1, (2, 4, 5)).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch([u, bias])
        v = dynamic_routing(u, 3, bias=bias, autodiff=autodiff)
        loss = tf.reduce_sum(tf.cast(v, tf.float32) * weights)
    du, dbias = tape.gradient(loss, [u, bias])
    assert v.dtype == tf.bfloat16 and du.dtype == tf.bfloat16 and dbias.dtype == tf.float32
    _, _, dbias32 = _routing_grads(small_u_hat, 3, weights, bias.numpy())
    np.testing.assert_allclose(dbias.numpy(), dbias32, rtol=0.05, atol=0.02 * np.abs(dbias32).max())
