"""Chapter 7, training: steps per epoch, the learning rate at the start of an epoch, and the TF2
port's loss under Keras 2's compile (integer labels shaped (batch, 1))."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ._helpers import np_
from .framework import Case, Exercise, Int, Mistake, Number, register

# =========================================================================== 7.1 steps per epoch


@lru_cache(maxsize=None)
def _steps_reference(n_images, batch_size, drop_remainder=False):
    import tensorflow as tf
    return int(tf.data.Dataset.range(n_images).batch(batch_size, drop_remainder=drop_remainder).cardinality())


_STEPS_ROWS = [(4000, 32, False), (7996, 128, False), (1000, 1000, False), (10, 3, False), (10, 3, True),
               (60000, 128, True), (7996, 128, True), (1000, 1000, True), (5, 8, False), (5, 8, True)]


def _steps_cases(rng):
    cases = [Case(a, "n_images={}, batch_size={}, drop_remainder={}".format(*a)) for a in _STEPS_ROWS]
    cases += [Case((60000, 128, False), "n_images=60000, batch_size=128 (drop_remainder left to its default)", npass=2),
              Case((7996, 100, False), "n_images=7996, batch_size=100 (drop_remainder left to its default)", npass=2)]
    return cases


check_steps_per_epoch = register(Exercise(
    id="7.1", slug="steps-per-epoch", title="A shape puzzle: steps per epoch", chapter="07_training_on_a_gpu",
    section="Optimizer, loss and metric", func="my_steps_per_epoch", checker="check_steps_per_epoch",
    signature="my_steps_per_epoch(n_images, batch_size, drop_remainder=False)",
    inputs=[("n_images", "int", ""), ("batch_size", "int", ""),
            ("drop_remainder", "bool", "drop a last, smaller batch (tf.data's batch(..., drop_remainder=True))")],
    returns=Int(), returns_dims="batches in one epoch",
    reference_name="tf.data.Dataset.range(n_images).batch(batch_size, drop_remainder).cardinality()",
    make_cases=_steps_cases, reference=_steps_reference, twins=False,
    mistakes=[
        Mistake("dropped_last_batch",
                "you dropped the last, smaller batch although drop_remainder is False: 60,000 / 128 = 468.75, so an "
                "epoch is 468 full batches and one of 96 — 469 steps. Round up: -(-n // b).",
                wrong=lambda n, b, d=False: n // b),
        Mistake("not_an_integer",
                "a number of steps is a whole number: round n / b up (or down, with drop_remainder).",
                wrong=lambda n, b, d=False: n / b),
        Mistake("always_plus_one",
                "n // b + 1 adds an empty batch when b divides n (1000 images in batches of 1000 is one step): "
                "round up instead, -(-n // b).",
                wrong=lambda n, b, d=False: n // b + 1),
        Mistake("flag_ignored",
                "your count ignores drop_remainder: with drop_remainder=True the last, smaller batch is dropped, so "
                "the count rounds down, n // b.",
                wrong=lambda n, b, d=False: -(-n // b)),
        Mistake("flag_inverted",
                "drop_remainder is read backwards: True drops the smaller last batch (round down), False keeps it "
                "(round up).",
                wrong=lambda n, b, d=False: n // b if not d else -(-n // b)),
    ],
    task=("Write `my_steps_per_epoch(n_images, batch_size, drop_remainder=False)`: how many training steps (batches) "
          "one epoch takes. With `drop_remainder=False` a last batch smaller than `batch_size` is kept, as in "
          "capslib's training; with `True` it is dropped, as `tf.data`'s `batch(..., drop_remainder=True)` does (a "
          "fixed batch shape, which XLA and several GPUs like). The paper's 60,000 MNIST images in batches of "
          "128, both ways?"),
    stub='''def my_steps_per_epoch(n_images, batch_size, drop_remainder=False):
    """ints in, int out: batches per epoch."""
    raise NotImplementedError''',
    solution='''def my_steps_per_epoch(n_images, batch_size, drop_remainder=False):
    """ints in, int out: batches per epoch."""
    if drop_remainder:
        return n_images // batch_size          # only full batches
    return -(-n_images // batch_size)          # ceil without floats: 60000, 128 -> 469''',
    seed=71,
))


# =========================================================================== 7.2 the learning rate at an epoch


@lru_cache(maxsize=None)
def _schedule(decay_steps=2000):
    import keras

    from ..train import TrainConfig, make_optimizer
    cfg = TrainConfig(learning_rate=1e-3, decay_steps=decay_steps, decay_rate=0.96)
    return keras.optimizers.schedules.deserialize(make_optimizer(cfg).get_config()["learning_rate"])


def _lr_reference(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    step = epoch * math.ceil(n_images / batch_size)
    return float(np_(_schedule(decay_steps)(step)))


def _lr(epoch, n=60000, b=128, d=2000, steps=None, staircase=False, per_step=False, linear=False, per_epoch=False,
        shift=0):
    s = epoch * (steps(n, b) if steps else -(-n // b)) + shift
    if per_epoch:
        return 1e-3 * 0.96 ** epoch
    if per_step:
        return 1e-3 * 0.96 ** s
    if linear:
        return 1e-3 * (1 - 0.04 * s / d)
    return 1e-3 * 0.96 ** (s // d if staircase else s / d)


# (epoch, n_images, batch_size, decay_steps). With capslib's 2,000 steps one step moves the rate by 2e-5
# (relative), under the tolerance; short decay periods make it 4% (1 step) to 0.08% (50 steps), so an
# answer one step off fails there.
_LR_ROWS = [(10, 7996, 128, 2000), (240, 60000, 128, 2000), (1000, 4000, 32, 2000), (5, 1000, 1000, 2000),
            (3, 10, 3, 2000), (50, 60000, 100, 2000), (2, 4000, 128, 2000),
            (3, 10, 3, 1), (2, 1000, 100, 5), (1, 4000, 32, 10), (7, 60000, 128, 50), (1, 5, 8, 1)]


def _lr_cases(rng):
    cases = [Case(a, "epoch={}, n_images={}, batch_size={}, decay_steps={}".format(*a)) for a in _LR_ROWS]
    cases += [Case((e, 60000, 128, 2000), f"epoch={e} (n_images, batch_size and decay_steps left to their defaults)",
                   npass=1) for e in (0, 1, 30, 300)]
    cases += [Case((4, 7996, 128, 2000), "epoch=4, n_images=7996, batch_size=128 (decay_steps left to its default)",
                   npass=3)]
    return cases


check_learning_rate = register(Exercise(
    id="7.2", slug="learning-rate", title="The learning rate at the start of an epoch", chapter="07_training_on_a_gpu",
    section="Optimizer, loss and metric", func="my_learning_rate", checker="check_learning_rate",
    signature="my_learning_rate(epoch, n_images=60000, batch_size=128, decay_steps=2000)",
    inputs=[("epoch", "int", "epochs finished so far (0 at the start)"), ("n_images", "int", "training images"),
            ("batch_size", "int", ""), ("decay_steps", "int", "steps per ×0.96 (2,000 in capslib)")],
    returns=Number(), returns_dims="Adam's learning rate at the first step of that epoch",
    reference_name="capslib.train.make_optimizer(TrainConfig(learning_rate=1e-3, decay_steps=decay_steps, "
                   "decay_rate=0.96))",
    make_cases=_lr_cases, reference=_lr_reference, twins=False,
    mistakes=[
        Mistake("staircase",
                "your rate drops in steps, once every decay_steps steps. capslib (like the official code's "
                "tf.train.exponential_decay without staircase) decays smoothly: 1e-3 · 0.96^(step / decay_steps), "
                "a real-valued exponent.",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, staircase=True)),
        Mistake("decays_every_step",
                "×0.96 is applied per decay_steps steps, not per step: the exponent is step / decay_steps.",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, per_step=True)),
        Mistake("decays_every_epoch",
                "×0.96 is applied per decay_steps *steps*, not per epoch: first turn the epochs into steps "
                "(epoch × steps per epoch).",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, per_epoch=True)),
        Mistake("decay_steps_ignored",
                "right for capslib's 2,000 steps, wrong for other values of decay_steps: the exponent is "
                "step / decay_steps, with the argument, not 2000.",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e, n, b, 2000)),
        Mistake("steps_rounded_down",
                "you counted n_images // batch_size steps per epoch, dropping the last, smaller batch: capslib's "
                "epochs keep it, so an epoch of 60,000 images in batches of 128 is 469 steps, not 468.",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, steps=lambda n, b: n // b)),
        Mistake("epoch_off_by_one",
                "you computed the rate at the *end* of the epoch (or counted epochs from 1): at the start of epoch "
                "`epoch`, epoch × steps_per_epoch steps have been taken (0 at the start of epoch 0).",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e + 1, n, b, d)),
        Mistake("off_by_one_step",
                "off by one step ({variant}): the first step of epoch `epoch` is step epoch × steps_per_epoch "
                "(epoch 0 starts at step 0, with the rate 1e-3), not one before or after it. With decay_steps = 1 "
                "a step is a whole ×0.96.",
                wrong={"one step early": lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, shift=-1),
                       "one step late": lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, shift=1)}),
        Mistake("linear_decay",
                "the decay is exponential — multiply by 0.96 per decay_steps steps — not a linear 4% per "
                "decay_steps steps.",
                wrong=lambda e, n=60000, b=128, d=2000: _lr(e, n, b, d, linear=True)),
    ],
    task=("capslib trains with Adam at 1e-3, decayed ×0.96 every `decay_steps` steps (2,000 in capslib), "
          "**smoothly** (as the official code's `tf.train.exponential_decay`), one step per batch, the last "
          "smaller batch of an epoch included. Write `my_learning_rate(epoch, n_images=60000, batch_size=128, "
          "decay_steps=2000)`: the learning rate at the first step of epoch `epoch` (counting from 0, so after "
          "`epoch` full epochs; epoch 0 starts at step 0, with the rate 1e-3). The check also uses short decay "
          "periods, down to 1 step, where one step more or less is a whole ×0.96. What is the rate after the "
          "paper's 30 epochs on MNIST, and after 300?"),
    stub='''def my_learning_rate(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    """epoch (int, from 0) -> the learning rate (float) at the first step of that epoch."""
    raise NotImplementedError''',
    solution='''def my_learning_rate(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    """epoch (int, from 0) -> the learning rate (float) at the first step of that epoch."""
    steps_per_epoch = -(-n_images // batch_size)       # the last, smaller batch counts: 469 for MNIST
    step = epoch * steps_per_epoch                     # steps taken before this epoch starts
    return 1e-3 * 0.96 ** (step / decay_steps)         # a smooth exponential: x0.96 per decay_steps steps

print(f"after 30 epochs: {my_learning_rate(30):.3g}; after 300: {my_learning_rate(300):.3g}")''',
    explanation=("30 epochs of 469 steps are 14,070 steps: $10^{-3}\\cdot 0.96^{7.035} = 7.5\\cdot 10^{-4}$. After 300 "
                 "epochs, $5.7\\cdot 10^{-5}$ — the rate keeps falling; nothing in the schedule stops it at a floor. "
                 "With 2,000 steps per ×0.96 one step changes the rate by only 0.002 %, so counting the steps "
                 "exactly only shows with short decay periods."),
    transfer="composes steps per epoch with the schedule, for any data size, decay period and late epochs",
    seed=72,
))


# =========================================================================== 7.3 find the bug: the port's loss


def _port_margin_loss(y_true, lengths):
    t = np.eye(10)[y_true.astype(int)]
    present = t * np.maximum(0.0, 0.9 - lengths) ** 2
    absent = 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return float(np.mean(np.sum(present + absent, axis=1)))


def _loss_np(labels, lengths, softmax=False, reduce_axis=-1, batch="mean"):
    t = np.eye(lengths.shape[-1])[np.asarray(labels).reshape(-1).astype(int)]
    if softmax:
        e = np.exp(lengths - lengths.max(-1, keepdims=True))
        lengths = e / e.sum(-1, keepdims=True)
    per = t * np.maximum(0.0, 0.9 - lengths) ** 2 + 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    per = per.sum(axis=reduce_axis)
    return float(per.mean() if batch == "mean" else per.sum())


def _loss_np_uncast(labels, lengths):
    t = np.eye(lengths.shape[-1])[np.asarray(labels).reshape(-1)]         # float labels cannot index
    per = t * np.maximum(0.0, 0.9 - lengths) ** 2 + 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return float(per.sum(axis=-1).mean())


def _label_cases(rng):
    def lengths(b):
        return rng.uniform(0.0, 1.0, (b, 10)).astype("float32")

    def labels(b):
        return rng.integers(0, 10, b)

    return [
        Case((labels(1).astype("int64"), lengths(1)), "y_true (1,) int64, lengths (1, 10)", batch=1),
        Case((labels(3).astype("int64"), lengths(3)), "y_true (3,) int64, lengths (3, 10)", batch=3),
        Case((labels(4).astype("int64")[:, None], lengths(4)),
             "y_true (4, 1) int64 — what Keras 2's compile passed the port — lengths (4, 10)", batch=4),
        Case((labels(8).astype("float32")[:, None], lengths(8)), "y_true (8, 1) float32, lengths (8, 10)", batch=8),
        Case((labels(5).astype("float32"), lengths(5)), "y_true (5,) float32, lengths (5, 10)", batch=5),
    ]


def _margin_reference(y_true, lengths):
    import capslib
    onehot = np.eye(10, dtype="float32")[np.asarray(y_true).reshape(-1).astype(int)]
    return float(np_(capslib.margin_loss(onehot, lengths)))


check_margin_loss = register(Exercise(
    id="7.3", slug="margin-loss", title="Find the bug: the TF2 port's loss under compile", chapter="07_training_on_a_gpu",
    section="Optimizer, loss and metric", func="my_margin_loss", checker="check_margin_loss",
    signature="my_margin_loss(y_true, lengths)",
    inputs=[("y_true", "(batch,) or (batch, 1) array", "integer class labels, stored as ints or floats"),
            ("lengths", "(batch, 10)", "capsule lengths in [0, 1)")],
    returns=Number(), returns_dims="Eq. 4 summed over the 10 classes, averaged over the batch",
    reference_name="capslib.margin_loss on one-hot labels",
    make_cases=_label_cases, reference=_margin_reference, batch_args=(0, 1),
    mistakes=[
        Mistake("port_unchanged",
                "that is still the port's loss: right for labels of shape (batch,), wrong for (batch, 1). There "
                "np.eye(10)[labels] — like tf.one_hot — gives (batch, 1, 10), which broadcasts against the lengths "
                "(batch, 10) to (batch, batch, 10): every image is scored against every label of the batch, and the "
                "sum over axis 1 then adds over the batch. Flatten the labels to (batch,) first.",
                wrong=_port_margin_loss),
        Mistake("labels_not_cast",
                "labels stored as floats (1.0, 7.0, …) cannot index an array: cast them to int before the "
                "one-hot.",
                error=r"arrays used as indices must be of integer|only integers, slices|IndexError.*float",
                example=lambda y, lengths: _loss_np_uncast(y, lengths)),
        Mistake("softmax_on_lengths",
                "you applied a softmax to the lengths first — as the port's model did before its loss. The margin "
                "loss reads the lengths themselves (after a softmax over 10 lengths in [0, 1) no class can reach "
                "0.9, so the present term never vanishes).",
                wrong=lambda y, lengths: _loss_np(y, lengths, softmax=True)),
        Mistake("summed_over_batch",
                "you summed over the batch: average it (the loss should not grow with the batch size).",
                wrong=lambda y, lengths: _loss_np(y, lengths, batch="sum")),
        Mistake("mean_over_classes",
                "you averaged over the 10 classes; Eq. 4's loss is the *sum* of L_k over the classes (then the "
                "mean over the batch).",
                wrong=lambda y, lengths: _loss_np(y, lengths) / 10),
    ],
    task=("The TF2 port one-hot encodes integer labels inside its loss, like `port_margin_loss` below (rewritten in "
          "NumPy), and trained to about 10% accuracy under `model.compile`: Keras 2's `compile` hands a loss integer "
          "labels as **`(batch, 1)`** — it adds an axis to match the `(batch, 10)` predictions. Call "
          "`port_margin_loss` on `y = np.array([[3], [1]])` and two rows of lengths: what shape does `t` have, and "
          "what gets summed? Then write `my_margin_loss(y_true, lengths)`, the fix: Eq. 4 ($m^+ = 0.9$, "
          "$m^- = 0.1$, $\\lambda = 0.5$) summed over the 10 classes and averaged over the batch, for class labels "
          "of shape `(batch,)` or `(batch, 1)`, stored as ints or as floats (1.0, 7.0, … when a dataset saved them "
          "as float32)."),
    stub='''import numpy as np

def port_margin_loss(y_true, lengths):
    """The port's loss, rewritten in NumPy: integer labels in, the one-hot made inside."""
    t = np.eye(10)[y_true.astype(int)]                          # (batch, 10) for labels (batch,)
    present = t * np.maximum(0.0, 0.9 - lengths) ** 2
    absent = 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return float(np.mean(np.sum(present + absent, axis=1)))

def my_margin_loss(y_true, lengths):
    """y_true (batch,) or (batch, 1) class labels (int or float), lengths (batch, 10) -> one number."""
    raise NotImplementedError''',
    solution='''import numpy as np

def my_margin_loss(y_true, lengths):
    """y_true (batch,) or (batch, 1) class labels (int or float), lengths (batch, 10) -> one number."""
    labels = np.asarray(y_true).reshape(-1).astype(int)         # (batch,) whatever Keras handed over
    t = np.eye(lengths.shape[-1])[labels]                       # (batch, 10)
    present = t * np.maximum(0.0, 0.9 - lengths) ** 2
    absent = 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return float(np.mean(np.sum(present + absent, axis=-1)))''',
    explanation=("With `(batch, 1)` labels the one-hot is `(batch, 1, 10)`; against `(batch, 10)` lengths it "
                 "broadcasts to `(batch, batch, 10)`, and `sum(axis=1)` then adds over the *batch*: each image is "
                 "pushed towards every label in its batch, which is why the port learned nothing under `compile`. "
                 "No error, no warning — only the shape of `t` gives it away. capslib refuses integer labels in "
                 "`margin_loss` with a `ShapeError` instead."),
    transfer="find the bug: the port's one-hot inside the loss, under Keras 2's (batch, 1) labels",
    seed=73,
))
