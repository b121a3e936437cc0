"""The conventional CNN the paper compares CapsNet with, sized to match a CapsNet's parameters.

The paper's MNIST baseline: three conv layers of 256, 256 and 128 channels with 5×5 kernels,
two fully connected layers of 328 and 192 units, dropout and a 10-way softmax (35.4M parameters
on 28×28). For the affine experiment it says only that its CNN had "a similar number of
parameters" to the CapsNet and used "MaxPooling and DropOut". :func:`baseline_cnn` keeps that
layout with a 2×2 max-pool after each of the first two convolutions;
:func:`matched_first_dense` sizes the first dense layer so the parameter counts match.

    images (batch, 40, 40, 1)
      └ conv1 5×5 ReLU, max-pool 2×2      (batch, 20, 20, c1)
      └ conv2 5×5 ReLU, max-pool 2×2      (batch, 10, 10, c2)
      └ conv3 5×5 ReLU                    (batch, 10, 10, c3)
      └ flatten → dense1 ReLU → dense2 ReLU → dropout 0.5 → softmax (batch, 10)
"""

from __future__ import annotations

import keras

__all__ = ["baseline_cnn", "matched_first_dense"]


def baseline_cnn(input_shape=(40, 40, 1), channels=(256, 256, 128), dense=(328, 192), num_classes=10,
                 name="baseline_cnn"):
    """The baseline CNN as a ``keras.Sequential``; every layer has a fixed name (conv1 … logits),
    so saved weights are matched by name. Output: class probabilities ``(batch, num_classes)``."""
    layers = [keras.Input(tuple(input_shape))]
    for n, ch in enumerate(channels):
        layers.append(keras.layers.Conv2D(ch, 5, padding="same", activation="relu", name=f"conv{n + 1}"))
        if n < 2:
            layers.append(keras.layers.MaxPooling2D(name=f"pool{n + 1}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    layers += [keras.layers.Dense(units, activation="relu", name=f"dense{n + 1}") for n, units in enumerate(dense)]
    layers += [keras.layers.Dropout(0.5, name="dropout"),
               keras.layers.Dense(num_classes, activation="softmax", name="logits")]
    return keras.Sequential(layers, name=name)


def matched_first_dense(target_params, input_shape=(40, 40, 1), channels=(256, 256, 128), second=192):
    """The first dense layer's width whose :func:`baseline_cnn` has about ``target_params``
    parameters: the count is linear in that width, so two counts give it."""
    p1 = baseline_cnn(input_shape, channels, (1, second)).count_params()
    p2 = baseline_cnn(input_shape, channels, (2, second)).count_params()
    return int(round(1 + (target_params - p1) / (p2 - p1)))
