"""CapsNet's layers, each a small Keras layer with ``get_config``.

    images (batch, 28, 28, 1)
      └ Conv2D 256@9×9, ReLU           (batch, 20, 20, 256)      plain keras.layers.Conv2D
      └ PrimaryCaps                    (batch, 1152, 8)          conv 256@9×9/2 → 6×6×32 capsules of 8D, squashed
      └ DigitCaps                      (batch, 10, 16)           û = W u, dynamic routing
      └ Length                         (batch, 10)               class probabilities
      └ Mask                           (batch, 160)              keep one capsule: the label's, or the longest
      └ Decoder                        (batch, 28, 28, 1)        512 → 1024 → 784 → image
"""

from __future__ import annotations

import keras
from keras import ops

from .ops import capsule_length, dynamic_routing, squash
from .shapes import ShapeError, check_dims, check_float, check_shape, static_shape

__all__ = ["PrimaryCaps", "DigitCaps", "Length", "Mask", "Decoder", "layer_initializers", "INITS"]

INITS = ("official", "keras")


def layer_initializers(init="official"):
    """Kernel and bias initialisers of every CapsNet layer, by name.

    ``"official"`` (capslib's default) is what the paper's official code draws
    (research/capsules in tensorflow/models): truncated normal kernels
    (``variables.weight_variable``, default stddev 0.1; conv1 asks for 5e-2) and every bias a
    constant 0.1 (``variables.bias_variable``; the decoder's ``fully_connected`` layers the same)::

        conv1      kernel TN(0.05)   bias 0.1        capsule_model.py, inference()
        primary    kernel TN(0.1)    bias 0.1        layers.py, conv_slim_capsule()
        W_ij       TN(0.1)           bias 0.1        layers.py, capsule(): (10, 16) bias
        decoder    kernels TN(0.1)   biases 0.1      layers.py, reconstruction()

    ``"keras"`` is Keras' defaults (glorot-uniform kernels, zero biases) with W ~ TN(0.01):
    what capslib used before it matched the official code, kept so the two can be compared
    (bench/init_comparison.py). Returns a dict of ``(kernel, bias)`` pairs keyed by layer.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    tn, const = keras.initializers.TruncatedNormal, keras.initializers.Constant
    if init == "official":
        return {"conv1": (tn(stddev=0.05), const(0.1)), "primary": (tn(stddev=0.1), const(0.1)),
                "digit": (tn(stddev=0.1), const(0.1)), "decoder": (tn(stddev=0.1), const(0.1))}
    return {"conv1": ("glorot_uniform", "zeros"), "primary": ("glorot_uniform", "zeros"),
            "digit": (tn(stddev=0.01), const(0.1)), "decoder": ("glorot_uniform", "zeros")}


_FEATURES = ("batch", "height", "width", "channels")     # conv1's output, PrimaryCaps' input


@keras.saving.register_keras_serializable(package="capslib")
class PrimaryCaps(keras.layers.Layer):
    """Convolutional capsules: conv ``types·dim``@k×k stride s, regrouped into squashed vectors.

    Input ``(batch, 20, 20, 256)`` → conv ``(batch, 6, 6, 256)`` → output ``(batch, 1152, 8)``.

    The 256 conv channels are read as 32 capsule *types* × 8 *dims*: channel ``t·8 + d`` is dim d
    of type t (the paper's "32 channels of convolutional 8D capsules"). Capsule i runs over
    (row, col, type): ``i = (row·6 + col)·32 + t`` (position-major; the official code's order is
    type-major, ``i = t·36 + row·6 + col``: the same capsules, numbered differently).

    Initialisers default to the official code's: kernel TN(0.1), bias 0.1
    (:func:`layer_initializers`).

    conv_scale: multiplies the convolution's output before its bias is added. The official code's
    primary capsules are a ``conv_slim_capsule`` with one routing iteration over the 32 types:
    zero logits, so every coupling is 1/32 and the pre-activation is ``conv/32 + bias``.
    ``conv_scale=1/32`` reproduces that (``CapsNet(init="official")`` sets it); 1 is a plain conv.
    """

    def __init__(self, num_types=32, dim=8, kernel_size=9, strides=2, kernel_initializer=None,
                 bias_initializer=None, conv_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_types, self.dim = num_types, dim
        self.kernel_size, self.strides, self.conv_scale = kernel_size, strides, float(conv_scale)
        kernel, bias = layer_initializers()["primary"]
        self.kernel_initializer = keras.initializers.get(kernel_initializer or kernel)
        self.bias_initializer = keras.initializers.get(bias_initializer or bias)
        # The bias is the layer's own, added after the scale: conv(x)·conv_scale + bias.
        self.conv = keras.layers.Conv2D(num_types * dim, kernel_size, strides=strides, name="conv", use_bias=False,
                                        kernel_initializer=self.kernel_initializer)

    def build(self, input_shape):
        check_dims(input_shape, _FEATURES, self.name, "conv1 features")
        self.conv.build(input_shape)
        self.bias = self.add_weight(name="bias", shape=(self.num_types * self.dim,),
                                    initializer=self.bias_initializer)

    def compute_output_shape(self, input_shape):
        h, w = self.conv.compute_output_shape(input_shape)[1:3]
        return (input_shape[0], h * w * self.num_types, self.dim)

    def preactivation(self, features):
        """The primary conv's output before the squash: ``conv(features)·conv_scale + bias``,
        ``(batch, 20, 20, 256)`` → ``(batch, 6, 6, 256)``, channels = 32 types × 8 dims."""
        check_shape(features, _FEATURES, self.name, "conv1 features")
        check_float(features, self.name, "conv1 features")
        x = self.conv(features)                                         # (batch, 6, 6, 256)
        if self.conv_scale != 1.0:
            x = x * self.conv_scale
        x = x + self.bias
        _, oh, ow, _ = static_shape(x)
        check_shape(x, ("batch", oh, ow, self.num_types * self.dim), self.name, "primary conv",
                    ("batch", "height", "width", "channels"))
        return x

    def call(self, features):
        x = self.preactivation(features)                                # (batch, 6, 6, 256)
        _, oh, ow, _ = static_shape(x)
        u = ops.reshape(x, (-1, oh * ow * self.num_types, self.dim))  # (batch, 1152, 8): 32 types × 8 dims
        u = squash(u)
        check_shape(u, ("batch", oh * ow * self.num_types, self.dim), self.name, "primary capsules",
                    ("batch", "in_caps", "in_dim"))
        return u

    def get_config(self):
        return {**super().get_config(), "num_types": self.num_types, "dim": self.dim,
                "kernel_size": self.kernel_size, "strides": self.strides, "conv_scale": self.conv_scale,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="capslib")
class DigitCaps(keras.layers.Layer):
    """One capsule per class, computed from all primary capsules by dynamic routing.

    Input u ``(batch, in_caps, in_dim)`` = ``(batch, 1152, 8)``; output v ``(batch, 10, 16)``.

    Weights: W ``(in_caps, out_caps, out_dim, in_dim)`` = ``(1152, 10, 16, 8)``, one 16×8 matrix
    W_ij per (input i, output j) pair, shared by the whole batch: 1,474,560 numbers. The
    predictions û_{j|i} = W_ij u_i are one einsum, laid out ``(batch, 10, 1152, 16)`` — j before i,
    as in the subscript — so routing's sums are batched matmuls. W is never tiled to the batch.

    use_bias: add a learned (10, 16) bias to every s_j, as the paper's official code does (+160
        parameters; on by default, as there). ``use_bias=False`` is the paper's equations exactly.
    Initialisers default to the official code's: W ~ TN(0.1), bias 0.1
    (:func:`layer_initializers`).
    """

    def __init__(self, num_caps=10, dim=16, routing_iterations=3, use_bias=True,
                 kernel_initializer=None, bias_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_caps, self.dim = num_caps, dim
        self.routing_iterations, self.use_bias = routing_iterations, use_bias
        kernel, bias = layer_initializers()["digit"]
        self.kernel_initializer = keras.initializers.get(kernel_initializer or kernel)
        self.bias_initializer = keras.initializers.get(bias_initializer or bias)

    def build(self, input_shape):
        check_dims(input_shape, ("batch", "in_caps", "in_dim"), self.name, "u")
        _, self.in_caps, self.in_dim = input_shape
        if self.in_caps is None or self.in_dim is None:
            raise ShapeError(f"ShapeError in {self.name} (u): in_caps and in_dim must be known, got {input_shape}")
        self.W = self.add_weight(name="W", shape=(self.in_caps, self.num_caps, self.dim, self.in_dim),
                                 initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.num_caps, self.dim),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_caps, self.dim)

    def predictions(self, u):
        """û_{j|i} = W_ij u_i: ``(batch, 1152, 8)`` → ``(batch, 10, 1152, 16)`` (out-major)."""
        check_float(u, self.name, "u")
        check_shape(u, ("batch", self.in_caps, self.in_dim), self.name, "u", ("batch", "in_caps", "in_dim"))
        u_hat = ops.einsum("bie,ijde->bjid", u, self.W)
        check_shape(u_hat, ("batch", self.num_caps, self.in_caps, self.dim), self.name, "u_hat",
                    ("batch", "out_caps", "in_caps", "out_dim"))
        return u_hat

    def call(self, u, return_coupling=False):
        u_hat = self.predictions(u)
        out = dynamic_routing(u_hat, self.routing_iterations, return_coupling, out_major=True, bias=self.bias)
        v = out[0] if return_coupling else out
        check_shape(v, ("batch", self.num_caps, self.dim), self.name, "v", ("batch", "out_caps", "out_dim"))
        return out

    def get_config(self):
        return {**super().get_config(), "num_caps": self.num_caps, "dim": self.dim,
                "routing_iterations": self.routing_iterations, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="capslib")
class Length(keras.layers.Layer):
    """Capsule lengths: ``(batch, 10, 16)`` → ``(batch, 10)``, each in [0, 1). Always float32."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")   # stays float32 under mixed precision
        super().__init__(**kwargs)

    def call(self, v):
        lengths = capsule_length(v)
        check_shape(lengths, ("batch",) + static_shape(v)[1:2], self.name, "lengths", ("batch", "out_caps"))
        return lengths

    def compute_output_shape(self, input_shape):
        return input_shape[:2]


@keras.saving.register_keras_serializable(package="capslib")
class Mask(keras.layers.Layer):
    """Zero every capsule but one, then flatten: ``(batch, 10, 16)`` → ``(batch, 160)``.

    ``Mask()(v, labels)`` keeps the capsule of the true class (labels one-hot ``(batch, 10)``):
    that is how the decoder is trained. ``Mask()(v)`` keeps the longest capsule (inference).
    """

    def call(self, v, labels=None):
        check_shape(v, ("batch", "out_caps", "out_dim"), self.name, "v")
        _, n_caps, dim = static_shape(v)
        if labels is None:
            labels = ops.one_hot(ops.argmax(capsule_length(v), axis=-1), n_caps)
        else:
            if len(static_shape(labels)) != 2:
                raise ShapeError(f"ShapeError in {self.name} (labels): expected one-hot (batch, {n_caps}), "
                                 f"got {static_shape(labels)} — use capslib.data.one_hot(labels)")
            check_shape(labels, ("batch", n_caps), self.name, "labels", ("batch", "out_caps"))
        masked = v * ops.cast(labels, v.dtype)[:, :, None]         # (batch, 10, 16), one capsule kept
        masked = ops.reshape(masked, (-1, n_caps * dim))           # (batch, 160)
        check_shape(masked, ("batch", n_caps * dim), self.name, "masked capsules")
        return masked

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2])


@keras.saving.register_keras_serializable(package="capslib")
class Decoder(keras.layers.Layer):
    """Reconstruct the image from the masked capsules: ``(batch, 160)`` → ``(batch, 28, 28, 1)``.

    Three dense layers, 512 ReLU → 1024 ReLU → H·W·C sigmoid, reshaped to the image.
    Initialisers default to the official code's: kernels TN(0.1), biases 0.1.
    """

    def __init__(self, image_shape=(28, 28, 1), hidden=(512, 1024), kernel_initializer=None,
                 bias_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape, self.hidden = tuple(image_shape), tuple(hidden)
        kernel, bias = layer_initializers()["decoder"]
        self.kernel_initializer = keras.initializers.get(kernel_initializer or kernel)
        self.bias_initializer = keras.initializers.get(bias_initializer or bias)
        n_pixels = 1
        for d in self.image_shape:
            n_pixels *= d
        self.dense = [keras.layers.Dense(h, activation="relu", name=f"dense_{h}", **self._fresh_initializers())
                      for h in self.hidden]
        self.dense.append(keras.layers.Dense(n_pixels, activation="sigmoid", name="pixels", **self._fresh_initializers()))

    def _fresh_initializers(self):
        # One initializer object per layer: an unseeded Keras initializer draws the same numbers
        # every time it is called, so layers sharing one would start from the same values.
        copy = lambda init: keras.initializers.get(keras.initializers.serialize(init))
        return {"kernel_initializer": copy(self.kernel_initializer), "bias_initializer": copy(self.bias_initializer)}

    def build(self, input_shape):
        shape = input_shape
        for layer in self.dense:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.image_shape

    def call(self, masked):
        x = masked
        for layer in self.dense:
            x = layer(x)
        images = ops.reshape(x, (-1,) + self.image_shape)
        check_shape(images, ("batch",) + self.image_shape, self.name, "reconstruction")
        return images

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape, "hidden": self.hidden,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}
