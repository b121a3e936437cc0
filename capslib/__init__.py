"""capslib — CapsNet (Sabour, Frosst & Hinton 2017) in Keras 3, shape-checked at every stage.

One implementation for the book "CapsNet, shape by shape": TensorFlow by default, and JAX or
PyTorch through ``KERAS_BACKEND``. Shapes are written as named dims, e.g. ``(batch, 1152, 8)``.

The public names below are stable: the book, the exercises and the tests use them. Importing
capslib registers its layers with Keras, so ``keras.saving.load_model`` can read a saved CapsNet.
"""

from .shapes import ShapeError, check_shape
from .ops import capsule_length, dynamic_routing, squash
from .layers import Decoder, DigitCaps, Length, Mask, PrimaryCaps
from .losses import margin_loss, reconstruction_loss
from .model import CapsNet

__version__ = "0.1.0"

__all__ = [
    "ShapeError", "check_shape",
    "squash", "dynamic_routing", "capsule_length",
    "PrimaryCaps", "DigitCaps", "Length", "Mask", "Decoder",
    "margin_loss", "reconstruction_loss",
    "CapsNet",
]
