"""margin_loss (Eq. 4) and reconstruction_loss, against hand-computed values."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from capslib import margin_loss, reconstruction_loss
from conftest import margin_loss_reference


def val(x):
    return float(keras.ops.convert_to_numpy(x))


Y = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
LENGTHS = np.array([[0.2, 0.7, 0.05], [0.95, 0.3, 0.5]], np.float32)


def test_margin_loss_hand_computed():
    # example 0: (0.9-0.7)² + 0.5·(0.2-0.1)² + 0            = 0.04 + 0.005 = 0.045
    # example 1: 0 (0.95 ≥ 0.9) + 0.5·(0.3-0.1)² + 0.5·(0.5-0.1)² = 0.02 + 0.08 = 0.1
    # mean over the batch: 0.0725
    assert val(margin_loss(Y, LENGTHS)) == pytest.approx(0.0725, rel=1e-5)
    assert margin_loss_reference(Y, LENGTHS) == pytest.approx(0.0725, rel=1e-5)


def test_margin_loss_matches_reference_random(rng):
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 16)]
    lengths = rng.uniform(0, 1, (16, 10)).astype("float32")
    assert val(margin_loss(y, lengths)) == pytest.approx(margin_loss_reference(y, lengths), rel=1e-5)
    assert val(margin_loss(y, lengths, m_plus=0.8, m_minus=0.2, lam=0.25)) == pytest.approx(
        margin_loss_reference(y, lengths, 0.8, 0.2, 0.25), rel=1e-5)


def test_margin_loss_is_a_scalar():
    assert tuple(keras.ops.shape(margin_loss(Y, LENGTHS))) == ()


def test_margin_loss_zero_when_confident_and_correct():
    y = np.eye(4, dtype="float32")[[0, 2, 3]]
    lengths = np.array([[0.9, 0.1, 0.0, 0.05],
                        [0.0, 0.1, 0.99, 0.1],
                        [0.1, 0.02, 0.08, 0.9]], np.float32)
    assert val(margin_loss(y, lengths)) == pytest.approx(0.0, abs=1e-12)
    # just past either margin it is not zero any more
    assert val(margin_loss(y, lengths - 0.01 * y)) > 0
    assert val(margin_loss(y, lengths + 0.01 * (1 - y))) > 0


def test_margin_loss_lambda_weights_absent_classes():
    y = np.array([[1, 0]], np.float32)
    lengths = np.array([[0.95, 0.5]], np.float32)           # only the absent term is non-zero
    assert val(margin_loss(y, lengths)) == pytest.approx(0.5 * 0.4 ** 2, rel=1e-5)
    assert val(margin_loss(y, lengths, lam=1.0)) == pytest.approx(0.4 ** 2, rel=1e-5)
    assert val(margin_loss(y, lengths, lam=0.0)) == pytest.approx(0.0, abs=1e-12)
    present_only = np.array([[0.5, 0.05]], np.float32)     # only the present term: not scaled by λ
    assert val(margin_loss(y, present_only)) == pytest.approx(0.4 ** 2, rel=1e-5)
    assert val(margin_loss(y, present_only, lam=0.0)) == pytest.approx(0.4 ** 2, rel=1e-5)


def test_margin_loss_is_mean_over_batch_not_sum():
    one = val(margin_loss(Y[:1], LENGTHS[:1]))
    two = val(margin_loss(Y[1:], LENGTHS[1:]))
    assert one == pytest.approx(0.045, rel=1e-5) and two == pytest.approx(0.1, rel=1e-5)
    assert val(margin_loss(Y, LENGTHS)) == pytest.approx((one + two) / 2, rel=1e-5)
    # repeating the batch does not change a mean
    assert val(margin_loss(np.tile(Y, (5, 1)), np.tile(LENGTHS, (5, 1)))) == pytest.approx(0.0725, rel=1e-5)


def test_margin_loss_sums_over_classes():
    y = np.array([[1, 0, 0, 0]], np.float32)
    lengths = np.array([[0.9, 0.3, 0.3, 0.3]], np.float32)
    assert val(margin_loss(y, lengths)) == pytest.approx(3 * 0.5 * 0.2 ** 2, rel=1e-5)


def test_margin_loss_accepts_integer_one_hot_and_float64():
    y_int = Y.astype("int32")
    assert val(margin_loss(y_int, LENGTHS)) == pytest.approx(0.0725, rel=1e-5)
    assert val(margin_loss(Y.astype("float64"), LENGTHS.astype("float64"))) == pytest.approx(0.0725, rel=1e-5)


def test_margin_loss_gradient():
    lengths = tf.Variable(LENGTHS)
    with tf.GradientTape() as tape:
        loss = margin_loss(Y, lengths)
    g = tape.gradient(loss, lengths).numpy()
    # d/dl of mean_n Σ_k: present −2(m⁺−l)/N, absent 2λ(l−m⁻)/N, 0 inside the margins
    expected = np.array([[2 * 0.5 * 0.1 / 2, -2 * 0.2 / 2, 0.0],
                         [0.0, 2 * 0.5 * 0.2 / 2, 2 * 0.5 * 0.4 / 2]])
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- reconstruction_loss


def test_reconstruction_loss_hand_computed():
    images = np.zeros((2, 2, 2, 1), np.float32)
    recon = np.zeros((2, 2, 2, 1), np.float32)
    recon[0, 0, 0, 0] = 1.0            # image 0: sum of squares 1
    recon[1] = 0.5                     # image 1: 4 · 0.25 = 1
    recon[1, 1, 1, 0] = -1.5           # image 1: 3 · 0.25 + 2.25 = 3
    # 0.0005 · mean(1, 3) = 0.001
    assert val(reconstruction_loss(images, recon)) == pytest.approx(0.001, rel=1e-5)
    assert val(reconstruction_loss(images, recon, weight=1.0)) == pytest.approx(2.0, rel=1e-5)


def test_reconstruction_loss_is_weighted_per_image_sum_batch_mean(rng):
    x = rng.uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    r = rng.uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    expected = 0.0005 * np.mean(np.sum((x.astype(np.float64) - r) ** 2, axis=(1, 2, 3)))
    assert val(reconstruction_loss(x, r)) == pytest.approx(expected, rel=1e-5)
    # a batch mean: duplicating the batch gives the same value
    assert val(reconstruction_loss(np.concatenate([x, x]), np.concatenate([r, r]))) == pytest.approx(expected, rel=1e-5)
    assert val(reconstruction_loss(x, x)) == 0.0


def test_reconstruction_loss_other_image_shape(rng):
    x = rng.uniform(0, 1, (3, 36, 36, 1)).astype("float32")
    r = np.zeros_like(x)
    expected = 0.0005 * np.mean(np.sum(x.astype(np.float64) ** 2, axis=(1, 2, 3)))
    assert val(reconstruction_loss(x, r)) == pytest.approx(expected, rel=1e-5)
