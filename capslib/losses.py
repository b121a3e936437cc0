"""CapsNet's two losses: the margin loss on capsule lengths (Eq. 4) and the reconstruction loss."""

from __future__ import annotations

import keras
from keras import ops

from .shapes import ShapeError, check_shape, static_shape

__all__ = ["margin_loss", "reconstruction_loss", "LOSS_BALANCES"]

# How the margin loss is weighed against 0.0005 × the reconstruction sum, by name → the factor on
# margin_loss for n classes. "paper": Eq. 4 summed over the classes (the paper's text). "official":
# the official code's layers._margin_loss returns 0.5·present + 0.5·0.5·absent per class and
# layers.evaluate takes reduce_mean over batch *and* classes: Eq. 4's sum divided by 2·n.
LOSS_BALANCES = {"paper": lambda n: 1.0, "official": lambda n: 1.0 / (2 * n)}


# Registered so a compiled model saved to .keras reloads with its loss (checkpoints, --resume).
@keras.saving.register_keras_serializable(package="capslib")
def margin_loss(y_true, lengths, m_plus=0.9, m_minus=0.1, lam=0.5):
    """Eq. 4: ``L_k = T_k max(0, m⁺ − |v_k|)² + λ (1 − T_k) max(0, |v_k| − m⁻)²``.

    y_true: one-hot labels ``(batch, 10)``. lengths: capsule lengths ``(batch, 10)`` in [0, 1).
    Summed over the classes k, averaged over the batch → a scalar.

    The correct capsule is pushed above 0.9, every other one below 0.1; λ = 0.5 keeps the nine
    absent classes from shrinking all capsules early in training. Integer labels are refused
    with a clear error rather than silently broadcast (the bug that trained a TF2 port to 10%).
    """
    y_shape, l_shape = static_shape(y_true), static_shape(lengths)
    if len(l_shape) != 2:
        raise ShapeError(f"ShapeError in margin_loss (lengths): expected (batch, classes), got {l_shape}")
    n = l_shape[1]
    if len(y_shape) != 2 or (y_shape[1] is not None and y_shape[1] != n):
        raise ShapeError(
            f"ShapeError in margin_loss (y_true): expected one-hot labels (batch, {n}), got {y_shape} — "
            "integer labels must be one-hot encoded first (capslib.data.one_hot)")
    check_shape(lengths, ("batch", n), "margin_loss", "lengths", ("batch", "classes"))
    lengths = ops.cast(lengths, "float32")
    t = ops.cast(y_true, "float32")
    present = t * ops.square(ops.relu(m_plus - lengths))
    absent = lam * (1.0 - t) * ops.square(ops.relu(lengths - m_minus))
    return ops.mean(ops.sum(present + absent, axis=-1))


def reconstruction_loss(images, reconstructions, weight=0.0005):
    """``weight`` × the per-image sum of squared pixel errors, averaged over the batch.

    images, reconstructions: ``(batch, 28, 28, 1)``. The paper scales the sum down by 0.0005 "so
    that it does not dominate the margin loss during training".
    """
    shape = static_shape(reconstructions)
    check_shape(images, ("batch",) + shape[1:], "reconstruction_loss", "images")
    diff = ops.cast(images, "float32") - ops.cast(reconstructions, "float32")
    per_image = ops.sum(ops.reshape(ops.square(diff), (ops.shape(diff)[0], -1)), axis=-1)
    return weight * ops.mean(per_image)
