"""CapsNet: the whole network of Sabour, Frosst & Hinton (2017) as one ``keras.Model``.

    model = capslib.CapsNet()
    model.compile(optimizer="adam", loss=capslib.margin_loss, metrics=["categorical_accuracy"])
    model.fit(x, y_onehot)                        # x (batch, 28, 28, 1) floats, y (batch, 10)
    lengths, reconstructions = model.predict(x)   # (batch, 10), (batch, 28, 28, 1)

Parameters: 8,215,728 by default, which includes the official code's (10, 16) DigitCaps bias;
8,215,568 with ``use_bias=False`` (the paper's equations exactly).
"""

from __future__ import annotations

import threading

import keras
import numpy as np
from keras import ops

from .layers import Decoder, DigitCaps, Length, Mask, PrimaryCaps, layer_initializers
from .losses import LOSS_BALANCES, reconstruction_loss
from .shapes import ShapeError, check_float, check_shape, format_shape, static_shape

__all__ = ["CapsNet"]


@keras.saving.register_keras_serializable(package="capslib")
class CapsNet(keras.Model):
    """CapsNet with the paper's defaults: conv1 256@9×9 → PrimaryCaps 32×8D → DigitCaps 10×16D
    (3 routing iterations) → lengths; masked capsules → decoder 512-1024-784.

    Input: images ``(batch, 28, 28, 1)``, float in [0, 1].
    Output of ``call``/``predict``: ``(lengths, reconstructions)``, ``(batch, 10)`` and
    ``(batch, 28, 28, 1)``; reconstructions come from the longest capsule.

    Training: ``compile(loss=capslib.margin_loss)`` is applied to the lengths. ``compute_loss``
    adds the reconstruction loss (weight 0.0005) with the decoder fed the capsule of the *true*
    class, as the paper trains it; metrics (e.g. ``"categorical_accuracy"``) see the lengths.
    Labels for ``fit``/``evaluate`` are one-hot ``(batch, 10)``.

    init: ``"official"`` (default) draws every layer as the paper's official code does, and scales
        the primary conv's output by 1/primary_types as the official code's primary capsules do
        (:class:`capslib.PrimaryCaps`, ``conv_scale``); ``"keras"`` uses Keras' defaults, W ~ TN(0.01)
        and no scale: capslib's former default (see :func:`capslib.layers.layer_initializers`).
    use_bias: the official code's (10, 16) bias on s_j (default True); False is the paper's Eq. 2.
    loss_balance: ``"paper"`` (default) is Eq. 4 summed over the classes + 0.0005 × the per-image
        sum of squared errors. ``"official"`` divides the margin term by 2 × classes (= 20), which
        is what the official code's loss comes to (:data:`capslib.losses.LOSS_BALANCES`), so the
        reconstruction weighs 20× more relative to the margin loss.
    """

    def __init__(self, input_shape=(28, 28, 1), num_classes=10, routing_iterations=3,
                 use_bias=True, conv_filters=256, primary_types=32, primary_dim=8,
                 digit_dim=16, decoder_hidden=(512, 1024), reconstruction_weight=0.0005,
                 init="official", loss_balance="paper", **kwargs):
        super().__init__(**kwargs)
        if loss_balance not in LOSS_BALANCES:
            raise ValueError(f"CapsNet: loss_balance must be one of {tuple(LOSS_BALANCES)}, got {loss_balance!r}")
        inits = layer_initializers(init)                   # refuses an unknown name
        self.image_shape = tuple(input_shape)
        self.num_classes, self.routing_iterations, self.use_bias = num_classes, routing_iterations, use_bias
        self.conv_filters, self.primary_types, self.primary_dim = conv_filters, primary_types, primary_dim
        self.digit_dim, self.decoder_hidden = digit_dim, tuple(decoder_hidden)
        self.reconstruction_weight, self.init, self.loss_balance = reconstruction_weight, init, loss_balance
        self._step = threading.local()

        kernel, bias = inits["conv1"]
        self.conv1 = keras.layers.Conv2D(conv_filters, 9, activation="relu", name="conv1",
                                         kernel_initializer=kernel, bias_initializer=bias)
        kernel, bias = inits["primary"]
        self.primary_caps = PrimaryCaps(primary_types, primary_dim, kernel_initializer=kernel, bias_initializer=bias,
                                        conv_scale=1.0 / primary_types if init == "official" else 1.0,
                                        name="primary_caps")
        kernel, bias = inits["digit"]
        self.digit_caps = DigitCaps(num_classes, digit_dim, routing_iterations, use_bias, kernel_initializer=kernel,
                                    bias_initializer=bias, name="digit_caps")
        self.length = Length(name="length")
        self.mask = Mask(name="mask")
        kernel, bias = inits["decoder"]
        self.decoder = Decoder(self.image_shape, self.decoder_hidden, kernel_initializer=kernel,
                               bias_initializer=bias, name="decoder")
        self.build((None,) + self.image_shape)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in (self.conv1, self.primary_caps, self.digit_caps):
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.decoder.build((None, self.num_classes * self.digit_dim))
        self.built = True

    # -- the forward pass, in two halves so the book and the loss can use each ------------------

    def check_images(self, images):
        """Refuse images that are not ``(batch, H, W, C)`` floats of the configured size."""
        shape = static_shape(images)
        want = ("batch",) + self.image_shape
        if len(shape) != 4:
            hint = " — add a channel axis: x[..., None]" if shape[1:] == self.image_shape[:2] else ""
            raise ShapeError(f"ShapeError in CapsNet (images): expected rank 4 {format_shape(want)}, "
                             f"got rank {len(shape)} {format_shape(shape)}{hint}")
        check_shape(images, want, "CapsNet", "images", ("batch", "height", "width", "channels"))
        check_float(images, "CapsNet", "images")
        if shape[0] == 0:
            raise ShapeError(f"ShapeError in CapsNet (images): empty batch {format_shape(shape)}")

    def encode(self, images):
        """images ``(batch, 28, 28, 1)`` → digit capsules v ``(batch, 10, 16)``."""
        self.check_images(images)
        features = self.conv1(images)                                   # (batch, 20, 20, 256)
        h, w = self.image_shape[0] - 8, self.image_shape[1] - 8
        check_shape(features, ("batch", h, w, self.conv_filters), "conv1", "features",
                    ("batch", "height", "width", "channels"))
        u = self.primary_caps(features)                                 # (batch, 1152, 8)
        return self.digit_caps(u)                                       # (batch, 10, 16)

    def decode(self, v, labels=None):
        """v ``(batch, 10, 16)`` → reconstructions ``(batch, 28, 28, 1)``, decoding the capsule of
        ``labels`` (one-hot ``(batch, 10)``), or the longest capsule when labels is None."""
        return self.decoder(self.mask(v, labels))

    def call(self, images, training=False):
        v = self.encode(images)
        # compute_loss decodes the true class's capsule; it runs right after this call, in the
        # same traced step, so it reads v from here instead of running the encoder twice.
        # Thread-local: MirroredStrategy runs one replica per thread.
        self._step.capsules = v
        return self.length(v), self.decode(v)

    # -- the Keras entry points -----------------------------------------------------------------
    # Keras traces fit/evaluate/predict with relaxed shapes (tf.function's reduce_retracing), in
    # which a wrong image size can become "unknown" and slip past the static checks in call().
    # So arrays are checked here, at the door, where their shapes are always known.

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_array(x)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_array(x)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_array(x)
        return super().predict(x, *args, **kwargs)

    def _check_array(self, x):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):  # NumPy arrays and tensors, not datasets
            return
        self.check_images(x)
        if isinstance(x, np.ndarray):                          # values too, where reading them is free
            if not np.all(np.isfinite(x)):
                raise ShapeError("ShapeError in CapsNet (images): NaN or inf in the images")
            if x.max() > 1.0 + 1e-6 or x.min() < -1e-6:
                raise ShapeError(f"ShapeError in CapsNet (images): pixels range over [{x.min():g}, {x.max():g}], "
                                 "expected [0, 1] — divide 0–255 images by 255 (capslib.data.scale_images)")

    # -- training: what fit() and evaluate() call ------------------------------------------------

    @property
    def margin_scale(self):
        """What the margin loss is multiplied by: 1 (``loss_balance="paper"``) or 1/20 ("official")."""
        return LOSS_BALANCES[self.loss_balance](self.num_classes)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Margin loss (the compiled loss, on the lengths, × :attr:`margin_scale`) + 0.0005 ×
        reconstruction loss of the decoder fed the true class's capsule. Reads v from the ``call``
        that produced ``y_pred`` in the same step: call it only as fit/evaluate do, right after
        the forward pass."""
        if sample_weight is not None:
            raise ValueError("CapsNet: sample_weight / class_weight are not supported — the margin and "
                             "reconstruction losses are batch means (capslib.losses)")
        lengths, _ = y_pred
        loss = super().compute_loss(x, y, lengths, sample_weight, training)   # the compiled margin loss
        if self.margin_scale != 1:
            loss = loss * self.margin_scale
        recon = self.decode(self._step.capsules, y)                           # decoder fed the true class
        total = loss + reconstruction_loss(x, recon, self.reconstruction_weight)
        # Both terms are batch means already, so Keras does not divide them by the number of
        # replicas under tf.distribute; do it here, or MirroredStrategy would sum N means.
        replicas = getattr(getattr(self, "distribute_strategy", None), "num_replicas_in_sync", 1)
        return total / replicas if replicas > 1 else total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, y_pred[0], sample_weight)        # metrics on lengths

    def get_config(self):
        return {**super().get_config(), "input_shape": self.image_shape, "num_classes": self.num_classes,
                "routing_iterations": self.routing_iterations, "use_bias": self.use_bias,
                "conv_filters": self.conv_filters, "primary_types": self.primary_types,
                "primary_dim": self.primary_dim, "digit_dim": self.digit_dim,
                "decoder_hidden": self.decoder_hidden, "reconstruction_weight": self.reconstruction_weight,
                "init": self.init, "loss_balance": self.loss_balance}
