"""DELIBERATELY WRONG variants for the pitfalls chapter — never use them to train.

Every function and layer in this module reproduces, on purpose, one bug that CapsNet ports
shipped (a widely read 2021 TF2 port, the book's "seed", among them) so that
``book/08_pitfalls.ipynb`` and ``tests/test_pitfalls.py`` can show its symptom next to capslib's
correct version. Everything that is *not* the bug is capslib's own piece (squash, margin_loss,
PrimaryCaps, DigitCaps, …), imported, never copied, so each variant differs from capslib in
exactly one place. The exception is the port's whole network (``seed_port_capsnet``): our
re-implementation of it, every bug included, in TensorFlow ops and a Keras 2 module, so that it
also runs on TensorFlow 2.5 itself.

===  ====================================  ================================  ===========================
 #   pitfall (whose)                       wrong variant here                correct (capslib)
===  ====================================  ================================  ===========================
 1   integer labels into a loss that       ``port_margin_loss``,             ``margin_loss`` + one-hot
     one-hots them (the port)              ``compile_path_demo``,            labels,
                                           ``seed_port_capsnet``             ``"categorical_accuracy"``
 2   softmax on the lengths (the port)     ``margin_loss_on_softmax``        ``margin_loss``
 3   logits per output dim (the port)      ``routing_per_dimension_logits``  ``dynamic_routing``
 4   squash over the classes (the port)    ``squash_wrong_axis``             ``squash`` over 16 dims
 5   primaries not squashed (the port)     ``UnsquashedPrimaryCaps``         ``PrimaryCaps``
 6   u, v tiled (the port); W tiled to a   ``seed_digit_stage``,             ``DigitCaps``
     fixed batch (other ports)             ``TiledDigitCaps``
 7   W ~ N(0, 0.05), TF2's default (the    ``set_digitcaps_stddev``,         ``DigitCaps``: TN(0.1)
     port); N(0, 1) (other ports)          ``tf_random_normal_defaults``
 8   routing softmax over the inputs i     ``routing_softmax_over_inputs``   ``dynamic_routing``
     (other ports)
 9   primary capsules across positions     ``seed_primary_capsules``,        ``PrimaryCaps``
     (the port)                            ``SeedGroupingPrimaryCaps``
===  ====================================  ================================  ===========================

Subprocess entry points, each printing JSON and each run by the chapter:
``python -m capslib.pitfalls keras2`` (pitfall 1 with a stand-in model under Keras 2, the
``tf-keras`` package with ``TF_USE_LEGACY_KERAS=1``), ``python -m capslib.pitfalls seed`` (the
port's own network under Keras 2) and ``python -m capslib.pitfalls memory --variant tiled``
(one digit-capsule training step's peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import keras
import numpy as np
from keras import ops

from .layers import PrimaryCaps
from .losses import margin_loss
from .ops import squash
from .shapes import ShapeError, check_shape, static_shape

__all__ = [
    "port_margin_loss", "compile_path_demo", "run_keras2_compile_demo", "KERAS2_RECORDED",
    "margin_loss_on_softmax", "routing_per_dimension_logits", "squash_wrong_axis",
    "UnsquashedPrimaryCaps", "capsnet_unsquashed_primary", "TiledDigitCaps", "measure_step_memory",
    "set_digitcaps_stddev", "tf_random_normal_defaults", "routing_softmax_over_inputs", "train_briefly",
    "SEED_BATCH", "seed_primary_capsules", "seed_port_loss", "seed_digit_stage", "seed_port_capsnet",
    "seed_port_run", "run_seed_port_demo", "SEED_KERAS2_RECORDED", "SEED_TF25_RECORDED",
    "SeedGroupingPrimaryCaps", "capsnet_seed_grouping",
]


# --------------------------------------------------------------------------- 1. the compile path

def port_margin_loss(y_true, y_pred, trace=None):
    """WRONG on purpose: the port's margin loss, which one-hot encodes ``y_true`` itself.

    Meant for integer labels ``(batch,)``: ``one_hot`` then gives ``(batch, 10)``. What it does
    depends on the shape Keras hands it: given ``(batch, 1)`` (what Keras 2's ``compile`` made of
    ``(batch,)`` labels) ``one_hot`` gives ``(batch, 1, 10)``, which broadcasts against the
    lengths ``(batch, 10)`` to ``(batch, batch, 10)``: every image is scored against every label
    in its batch. ``trace``: an optional dict that records the shapes it saw (at trace time).
    """
    t = ops.one_hot(ops.cast(y_true, "int32"), 10)
    per_class = t * ops.square(ops.relu(0.9 - y_pred)) + 0.5 * (1.0 - t) * ops.square(ops.relu(y_pred - 0.1))
    if trace is not None:
        trace.setdefault("y_true", (tuple(static_shape(y_true)), keras.backend.standardize_dtype(y_true.dtype)))
        trace.setdefault("one_hot", tuple(static_shape(t)))
        trace.setdefault("per_class_loss", tuple(static_shape(per_class)))
    return ops.mean(ops.sum(per_class, axis=-1))


def _small_classifier(K, seed):
    """A deliberately tiny model whose 10 outputs are in (0, 1), like capsule lengths: conv 16@5×5
    stride 2 → dense 10 sigmoid. ``K`` is the Keras module (``keras``, or ``tf_keras``)."""
    K.utils.set_random_seed(seed)
    return K.Sequential([K.Input((28, 28, 1)),
                         K.layers.Conv2D(16, 5, strides=2, activation="relu"),
                         K.layers.Flatten(),
                         K.layers.Dense(10, activation="sigmoid")])


def compile_path_demo(K, x, y, x_test, y_test, labels="int", loss="port", metric="Accuracy",
                      steps=150, batch_size=32, eval_every=25, seed=0):
    """Train the tiny model the way the port did, with ``K.Model.compile`` + ``fit``, and record
    what happened. Runs under Keras 3 (``K=keras``) and Keras 2 (``K=tf_keras``) alike.

    labels: ``"int"`` (fit on ``(N,)`` integers) or ``"onehot"`` (``(N, 10)``).
    loss: ``"port"`` (:func:`port_margin_loss`) or ``"capslib"`` (:func:`capslib.margin_loss`).
    metric: ``"Accuracy"`` (the string), ``"Accuracy()"`` (the class ``K.metrics.Accuracy``) or
    ``"categorical_accuracy"``.
    Returns a dict: the Keras version, the shapes the loss saw, the metric Keras chose, the
    metric and loss it reported, the held-out argmax accuracy every ``eval_every`` steps, or the
    error ``fit`` raised.
    """
    trace = {}

    def loss_fn(y_true, y_pred):
        if loss == "port":
            return port_margin_loss(y_true, y_pred, trace)
        trace.setdefault("y_true", (tuple(static_shape(y_true)), keras.backend.standardize_dtype(y_true.dtype)))
        return margin_loss(y_true, y_pred)

    loss_fn.__name__ = "margin_loss"
    model = _small_classifier(K, seed)
    metric_arg = K.metrics.Accuracy() if metric == "Accuracy()" else metric
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss=loss_fn, metrics=[metric_arg])
    y_fit = np.eye(10, dtype="float32")[y] if labels == "onehot" else y
    out = {"keras": K.__version__, "labels": labels, "loss": loss, "metric": metric,
           "steps": [], "heldout_accuracy": [], "reported_metric": [], "reported_loss": []}
    per_chunk = eval_every * batch_size
    try:
        for start in range(0, steps * batch_size, per_chunk):
            h = model.fit(x[start:start + per_chunk], y_fit[start:start + per_chunk],
                          batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
            hist = {k: float(v[-1]) for k, v in h.history.items()}
            out["reported_loss"].append(hist.pop("loss"))
            out["reported_metric"].append(next(iter(hist.values())))
            out["steps"].append(start // batch_size + len(range(0, min(per_chunk, len(x) - start), batch_size)))
            pred = np.asarray(model.predict(x_test, batch_size=256, verbose=0))
            out["heldout_accuracy"].append(float(np.mean(pred.argmax(-1) == y_test)))
    except Exception as e:  # the symptom of some combinations is an error: record it
        message = _last_line(str(e))
        out["error"] = message if message.startswith(type(e).__name__) else f"{type(e).__name__}: {message}"
    names = [m for m in model.metrics if m.name not in ("loss",)]
    out["metric_chosen"] = _metric_description(names)
    out["trace"] = {k: [list(v[0]), v[1]] if k == "y_true" else list(v) for k, v in trace.items()}
    return out


def _last_line(message):
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _metric_description(metrics):
    """Which metric function Keras resolved the user's metric to (name → inner function)."""
    found = []
    for m in metrics:
        inner = getattr(m, "_fn", None) or getattr(m, "fn", None)
        subs = getattr(m, "metrics", None) or getattr(m, "_user_metrics", None)
        if subs and not inner:
            for s in getattr(m, "metrics", []) or []:
                fn = getattr(s, "_fn", None) or getattr(s, "fn", None)
                found.append(f"{s.name} = {type(s).__name__}" + (f"({fn.__name__})" if fn else ""))
        else:
            found.append(f"{m.name} = {type(m).__name__}" + (f"({inner.__name__})" if inner else ""))
    return "; ".join(found)


def _keras2_main(npz, steps):
    """Body of ``python -m capslib.pitfalls keras2``: pitfall 1 under Keras 2 (tf_keras)."""
    import tensorflow as tf
    import tf_keras  # Keras 2 code on today's TensorFlow

    d = np.load(npz)
    x, y, xt, yt = (d[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    runs = [compile_path_demo(tf_keras, x, y, xt, yt, "int", "port", "Accuracy", steps),
            compile_path_demo(tf_keras, x, y, xt, yt, "int", "port", "Accuracy()", steps),
            compile_path_demo(tf_keras, x, y, xt, yt, "onehot", "capslib", "categorical_accuracy", steps)]
    return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "runs": runs}


# Recorded output of ``run_keras2_compile_demo`` (quick mode: 100 steps on the offline MNIST subset),
# shown by the chapter where the tf-keras package is not installed; ``provenance`` says how it was made.
# (Traces are tuples here, lists in the live JSON; the chapter reads both.)
KERAS2_RECORDED = {'tensorflow': '2.21.0',
 'tf_keras': '2.21.0',
 'runs': [{'keras': '2.21.0',
           'labels': 'int',
           'loss': 'port',
           'metric': 'Accuracy',
           'steps': [25, 50, 75, 100],
           'heldout_accuracy': [0.151, 0.205, 0.226, 0.12],
           'reported_metric': [0.1538, 0.1475, 0.1787, 0.1887],
           'reported_loss': [0.6148, 0.5378, 0.53, 0.527],
           'metric_chosen': 'Accuracy = MeanMetricWrapper(sparse_categorical_accuracy)',
           'trace': {'y_true': ((32, 1), 'int64'),
                     'one_hot': (32, 1, 10),
                     'per_class_loss': (32, 32, 10)}},
          {'keras': '2.21.0',
           'labels': 'int',
           'loss': 'port',
           'metric': 'Accuracy()',
           'steps': [],
           'heldout_accuracy': [],
           'reported_metric': [],
           'reported_loss': [],
           'error': 'ValueError: Shapes (32, 1) and (32, 10) are incompatible',
           'metric_chosen': 'accuracy = Accuracy(accuracy)',
           'trace': {'y_true': ((32, 1), 'int64'),
                     'one_hot': (32, 1, 10),
                     'per_class_loss': (32, 32, 10)}},
          {'keras': '2.21.0',
           'labels': 'onehot',
           'loss': 'capslib',
           'metric': 'categorical_accuracy',
           'steps': [25, 50, 75, 100],
           'heldout_accuracy': [0.564, 0.784, 0.82, 0.857],
           'reported_metric': [0.335, 0.6825, 0.82, 0.8425],
           'reported_loss': [0.5826, 0.3865, 0.228, 0.1619],
           'metric_chosen': 'categorical_accuracy = MeanMetricWrapper(categorical_accuracy)',
           'trace': {'y_true': ((32, 10), 'float32')}}],
 'provenance': 'recorded on 2026-11-28 from run_keras2_compile_demo (a subprocess with '
               'TF_USE_LEGACY_KERAS=1) with tf-keras 2.21.0 on TensorFlow 2.21.0 (CPU), on the '
               'quick-mode data: the first 3,200 offline-MNIST training digits, 1,000 held-out '
               'digits, 100 steps of batch 32'}


def run_keras2_compile_demo(x, y, x_test, y_test, steps=150, timeout=600):
    """Run pitfall 1 under Keras 2 in a subprocess (``TF_USE_LEGACY_KERAS=1``) on the given
    images ``(N, 28, 28, 1)`` and integer labels ``(N,)``; return its JSON dict (the three runs
    of :func:`compile_path_demo`), or ``None`` when the ``tf_keras`` package is not installed."""
    import importlib.util
    import tempfile
    if importlib.util.find_spec("tf_keras") is None:
        return None
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0",
               KERAS_BACKEND="tensorflow")
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "data.npz")
        n = steps * 32
        np.savez(npz, x_train=np.asarray(x[:n], "float32"), y_train=np.asarray(y[:n], "int64"),
                 x_test=np.asarray(x_test, "float32"), y_test=np.asarray(y_test, "int64"))
        proc = subprocess.run([sys.executable, "-m", "capslib.pitfalls", "keras2", "--npz", npz,
                               "--steps", str(steps)], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the Keras 2 run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 1b. the port's own network
#
# Everything in this section uses only TensorFlow and a Keras 2 module passed in as ``K`` — no
# capslib, no Keras 3 — so that the same functions run under ``tf_keras`` today and under
# TensorFlow 2.5's own ``tf.keras`` (how SEED_TF25_RECORDED was made). Our re-implementation of
# the port from its blog post, bugs included; not its code.

SEED_BATCH = 128          # the port's config.batch_size (and Adam's learning rate 1e-3)


def seed_primary_capsules(tf, conv, num_types=32, dim=8):
    """WRONG on purpose: the port's regrouping of the primary convolution into capsules.

    conv ``(batch, h, w, dim·types)`` → reshape ``(batch, h, w, dim, types)`` → transpose
    ``(0, 4, 3, 1, 2)`` = ``(batch, types, dim, h, w)`` → reshape ``(batch, h·w·types, dim)``.
    The transpose puts the two *spatial* axes last, so each run of ``dim`` consecutive numbers —
    one "capsule" — is one channel at ``dim`` neighbouring positions in row-major order: capsule 0
    is channel 0 at (0, 0), (0, 1), …, (0, 5), (1, 0), (1, 1). (h·w = 36 is not a multiple of 8, so
    one capsule in nine runs off the end of the map into the next channel.) Nothing raises: the
    shape is the right one. ``tf``: any module with ``reshape`` and ``transpose`` (``tf``,
    ``keras.ops``, ``numpy``)."""
    _, h, w, c = conv.shape
    x = tf.reshape(conv, (-1, h, w, dim, num_types))
    x = tf.transpose(x, (0, 4, 3, 1, 2))                  # (batch, types, dim, h, w): positions last
    return tf.reshape(x, (-1, h * w * num_types, dim))


def seed_port_loss(tf, K, num_classes=10, trace=None):
    """WRONG on purpose: the port's margin-loss class, which one-hot encodes ``y_true`` itself and
    sums over axis 1. With ``y_true`` ``(batch,)`` that is the margin loss; with ``(batch, 1)``
    (Keras 2's ``compile``) ``one_hot`` gives ``(batch, 1, 10)``, the loss broadcasts to
    ``(batch, batch, 10)`` and axis 1 is then the *images*. ``trace``: a dict that records shapes."""

    class PortMarginLoss(K.losses.Loss):
        def call(self, y_true, y_pred):
            t = tf.one_hot(tf.cast(y_true, tf.int32), num_classes)
            y_pred = tf.cast(y_pred, tf.float32)
            per_class = (t * tf.square(tf.maximum(0.0, 0.9 - y_pred))
                         + 0.5 * (1.0 - t) * tf.square(tf.maximum(0.0, y_pred - 0.1)))
            if trace is not None:
                trace.setdefault("y_true", [[d if d is None else int(d) for d in y_true.shape], y_true.dtype.name])
                trace.setdefault("one_hot", [d if d is None else int(d) for d in t.shape])
                trace.setdefault("per_class_loss", [d if d is None else int(d) for d in per_class.shape])
            return tf.reduce_mean(tf.reduce_sum(per_class, 1))

    return PortMarginLoss()


def seed_digit_stage(tf, u, W, stored_batch=1, iterations=3):
    """WRONG on purpose: the port's DigitCaps and routing, as one function of TensorFlow ops.

    u ``(B, 1152, 10, 8, 1)``: the primary capsules, already tiled ×10 (one copy per class).
    W ``(1, 1152, 10, 16, 8)``. stored_batch: the batch size the layer saw when it was built (the
    port: 1). Returns the lengths ``(B, 10)`` (before the port's softmax). What it allocates, for
    a batch of B: W tiled ×stored_batch; û ``(B, 1152, 16, 10)``; at every iteration v tiled ×1152
    to ``(B, 1152, 16, 10)``, the size of û, and the logits b, which broadcast from
    ``(stored_batch, 1152, 16, 10)`` to û's size.
    """
    classes = int(W.shape[2])
    b = tf.zeros((stored_batch, 1152, 16, classes))                         # batch from build time
    W = tf.tile(W, (stored_batch, 1, 1, 1, 1))                                # ×1 in the port
    u_hat = tf.transpose(tf.squeeze(tf.matmul(W, u), 4), (0, 1, 3, 2))      # (B, 1152, 16, 10)
    for _ in range(iterations):
        c = tf.nn.softmax(b, axis=3)                                        # over the classes
        s = tf.reshape(tf.reduce_sum(c * u_hat, 1), (-1, 16, classes))      # (B, 16, 10)
        n = tf.norm(s, axis=2, keepdims=True)                               # norm over the classes
        v = n * s / (1.0 + n ** 2)                                          # (pitfall 4)
        b = b + tf.tile(v[:, None], (1, 1152, 1, 1)) * u_hat                # v ×1152; per dim (pitfall 3)
    return tf.norm(v, axis=1)                                               # |v| over the 16 dims


def seed_port_capsnet(tf, K, num_classes=10, build_batch=1, override_train_step=False, loss=None):
    """WRONG on purpose: the 2021 TF2 port's whole network, every bug included, in Keras 2.

    ``K``: ``tf_keras`` (Keras 2 on today's TensorFlow), or ``tf.keras`` on TensorFlow ≤ 2.15. For a
    batch of B images ``(B, 28, 28, 1)``:

        conv1     256@9×9, ReLU                                            (B, 20, 20, 256)
        primary   conv 256@9×9 stride 2, no activation                     (B, 6, 6, 256)
                  :func:`seed_primary_capsules` (pitfall 9), not squashed    (B, 1152, 8)
                  (pitfall 5), tiled ×10                                   (B, 1152, 10, 8, 1)
        W         (1, 1152, 10, 16, 8) from ``tf.random_normal_initializer()`` (pitfall 7)
        routing   b = zeros((build_batch, 1152, 16, 10)): the batch size stored when the layer was
                  built (the port builds with 1, so b broadcasts, and W is tiled ×1)
                  3 times: c = softmax(b) over the 10 classes; û = W u        (B, 1152, 16, 10)
                  s = Σ_i c ⊙ û (B, 16, 10); v = squash over the *classes* (pitfall 4)
                  b += (v tiled ×1152) ⊙ û: one logit per output dimension (pitfall 3)
        output    softmax over the classes of |v|, the norm over the 16 dims (pitfall 2)  (B, 10)

    override_train_step: the author's first workaround — a ``train_step`` that calls ``loss``
    (default :func:`seed_port_loss`) on the labels as ``fit`` gives them, instead of
    ``compiled_loss``, and still updates ``compiled_metrics``. The model is built here with
    ``(build_batch, 28, 28, 1)``, as the port's ``main()`` builds it with batch 1.
    """
    classes = num_classes

    class PortPrimaryCaps(K.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = K.layers.Conv2D(256, 9, strides=2)

        def call(self, features):
            u = seed_primary_capsules(tf, self.conv(features))                  # (B, 1152, 8)
            return tf.tile(u[:, :, None, :, None], (1, 1, classes, 1, 1))       # (B, 1152, 10, 8, 1)

    class PortDigitCaps(K.layers.Layer):
        def build(self, input_shape):
            self.stored_batch = int(input_shape[0])                             # baked in at build time
            self.W = self.add_weight(name="W", shape=(1, 1152, classes, 16, 8), dtype=tf.float32,
                                     initializer=tf.random_normal_initializer())
            super().build(input_shape)

        def call(self, u):
            return seed_digit_stage(tf, u, self.W, self.stored_batch)         # (B, 10)

    class PortCapsNet(K.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv1 = K.layers.Conv2D(256, 9, activation="relu")
            self.prim_cap = PortPrimaryCaps()
            self.digit_cap = PortDigitCaps()

        def call(self, images):
            return tf.nn.softmax(self.digit_cap(self.prim_cap(self.conv1(images))), axis=1)

        if override_train_step:
            def train_step(self, data):
                x, y = data
                with tf.GradientTape() as tape:
                    y_pred = self(x, training=True)
                    loss_value = self.port_loss(y, y_pred)
                grads = tape.gradient(loss_value, self.trainable_variables)
                self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
                self.compiled_metrics.update_state(y, y_pred)
                return {m.name: m.result() for m in self.metrics}

    model = PortCapsNet()
    model.port_loss = loss if loss is not None else seed_port_loss(tf, K, classes)
    model.build((build_batch, 28, 28, 1))
    return model


def seed_port_run(tf, K, x, y, x_test, y_test, train_step="compile", metric="Accuracy", steps=24,
                  batch_size=SEED_BATCH, eval_every=8, seed=0):
    """Train :func:`seed_port_capsnet` the port's way — Adam 1e-3, integer labels ``(N,)`` to
    ``fit``, its loss class in ``compile`` — and record what happened.

    train_step: ``"compile"`` (Keras' own step: the code as posted) or ``"override"`` (the
    author's workaround). metric: what ``compile`` gets as ``metrics=`` — ``"Accuracy"`` (the
    port's string), ``"Accuracy()"`` (the class ``K.metrics.Accuracy``), another string, or
    ``None``. Returns a dict: versions, the shapes the loss saw, the metric Keras chose, the
    reported metric and loss and the held-out accuracy (argmax) every ``eval_every`` steps, the
    standard deviation W was drawn with, the error ``fit`` raised if any, and the seconds taken."""
    import time

    t0 = time.perf_counter()
    if hasattr(K.utils, "set_random_seed"):
        K.utils.set_random_seed(seed)
    else:                                            # TensorFlow 2.5's tf.keras
        np.random.seed(seed)
        tf.random.set_seed(seed)
    trace = {}
    loss = seed_port_loss(tf, K, trace=trace)
    model = seed_port_capsnet(tf, K, override_train_step=(train_step == "override"), loss=loss)
    metric_arg = K.metrics.Accuracy() if metric == "Accuracy()" else metric
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss=loss, metrics=metric_arg)
    x, y = np.asarray(x, "float32"), np.asarray(y).astype("int32")          # the port's preprocess()
    out = {"tensorflow": tf.__version__, "keras": K.__version__, "train_step": train_step, "metric": metric,
           "batch_size": batch_size, "W_std_initial": round(float(np.std(model.digit_cap.W.numpy())), 4),
           "steps": [], "heldout_accuracy": [], "reported_metric": [], "reported_loss": []}
    per_chunk = eval_every * batch_size
    try:
        for start in range(0, steps * batch_size, per_chunk):
            h = model.fit(x[start:start + per_chunk], y[start:start + per_chunk], batch_size=batch_size,
                          epochs=1, verbose=0, shuffle=False)
            hist = {k: float(v[-1]) for k, v in h.history.items()}
            loss_value = hist.pop("loss", None)          # absent when the override skips compiled_loss
            out["reported_loss"].append(None if loss_value is None else round(loss_value, 4))
            out["reported_metric"].append(round(next(iter(hist.values())), 4) if hist else None)
            out["steps"].append(min(start + per_chunk, steps * batch_size) // batch_size)
            pred = np.asarray(model.predict(x_test, batch_size=batch_size, verbose=0))
            out["heldout_accuracy"].append(round(float(np.mean(pred.argmax(-1) == y_test)), 4))
    except Exception as e:  # the symptom of some combinations is an error: record it
        message = _last_line(str(e))
        out["error"] = message if message.startswith(type(e).__name__) else f"{type(e).__name__}: {message}"
    out["metric_chosen"] = _metric_description([m for m in model.metrics if m.name != "loss"])
    out["trace"] = trace
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


SEED_RUNS = (("compile", "Accuracy"), ("override", "Accuracy"), ("compile", "Accuracy()"))


def _seed_main(npz, steps, eval_every, runs):
    """Body of ``python -m capslib.pitfalls seed``: :func:`seed_port_run` under Keras 2 (tf_keras)."""
    import tensorflow as tf
    import tf_keras

    d = np.load(npz)
    out = [seed_port_run(tf, tf_keras, d["x_train"], d["y_train"], d["x_test"], d["y_test"], train_step,
                         None if metric == "None" else metric, steps=steps, eval_every=eval_every)
           for train_step, metric in runs]
    return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "runs": out}


def run_seed_port_demo(x, y, x_test, y_test, steps=24, eval_every=8, runs=SEED_RUNS, timeout=3600):
    """Train the port's own network (:func:`seed_port_capsnet`) under Keras 2 in a subprocess
    (``TF_USE_LEGACY_KERAS=1``), once per ``(train_step, metric)`` in ``runs``, each on the first
    ``steps × 128`` images ``x`` ``(N, 28, 28, 1)`` with integer labels ``y``; held-out accuracy on
    all of ``x_test``. Returns the JSON dict, or ``None`` when ``tf_keras`` is not installed."""
    import importlib.util
    import tempfile
    if importlib.util.find_spec("tf_keras") is None:
        return None
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0",
               KERAS_BACKEND="tensorflow")
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "data.npz")
        n = steps * SEED_BATCH
        np.savez(npz, x_train=np.asarray(x[:n], "float32"), y_train=np.asarray(y[:n], "int64"),
                 x_test=np.asarray(x_test, "float32"), y_test=np.asarray(y_test, "int64"))
        proc = subprocess.run([sys.executable, "-m", "capslib.pitfalls", "seed", "--npz", npz, "--steps", str(steps),
                               "--eval-every", str(eval_every), "--runs"] + [f"{t}:{m}" for t, m in runs],
                              capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the Keras 2 run of the port's network failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Recorded output of ``run_seed_port_demo`` (quick mode), shown by the chapter where the tf-keras
# package is not installed; ``provenance`` says how it was made.
SEED_KERAS2_RECORDED = {'tensorflow': '2.21.0',
 'tf_keras': '2.21.0',
 'runs': [{'tensorflow': '2.21.0',
           'keras': '2.21.0',
           'train_step': 'compile',
           'metric': 'Accuracy',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [5, 10],
           'heldout_accuracy': [0.1211, 0.0859],
           'reported_metric': [0.0969, 0.0828],
           'reported_loss': [8.2087, 8.192],
           'metric_chosen': 'Accuracy = MeanMetricWrapper(sparse_categorical_accuracy)',
           'trace': {'y_true': [[128, 1], 'int32'],
                     'one_hot': [128, 1, 10],
                     'per_class_loss': [128, 128, 10]}},
          {'tensorflow': '2.21.0',
           'keras': '2.21.0',
           'train_step': 'override',
           'metric': 'Accuracy',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [5, 10],
           'heldout_accuracy': [0.4609, 0.6406],
           'reported_metric': [0.2016, 0.6344],
           'reported_loss': [None, None],
           'metric_chosen': 'Accuracy = MeanMetricWrapper(sparse_categorical_accuracy)',
           'trace': {'y_true': [[128], 'int32'], 'one_hot': [128, 10], 'per_class_loss': [128, 10]}},
          {'tensorflow': '2.21.0',
           'keras': '2.21.0',
           'train_step': 'compile',
           'metric': 'Accuracy()',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [],
           'heldout_accuracy': [],
           'reported_metric': [],
           'reported_loss': [],
           'error': 'ValueError: Shapes (128, 1) and (128, 10) are incompatible',
           'metric_chosen': 'accuracy = Accuracy(accuracy)',
           'trace': {'y_true': [[128, 1], 'int32'],
                     'one_hot': [128, 1, 10],
                     'per_class_loss': [128, 128, 10]}}],
 'provenance': 'recorded on 2026-12-02 from run_seed_port_demo (a subprocess with TF_USE_LEGACY_KERAS=1) '
               'with tf-keras 2.21.0 on TensorFlow 2.21.0 (CPU), on the quick-mode data: the first 1,280 '
               'offline-MNIST training digits (10 steps of batch 128 per run), 256 held-out digits, every 5 '
               'steps'}

# The same functions under TensorFlow 2.5.0 itself, which needs Python <= 3.9 and so cannot run in
# the book's build: recorded once (``provenance``). The runs with the string 'Accuracy' are the port's
# code as posted; 'accuracy' (lower case) is the metric TF 2.5 matched to sparse categorical accuracy.
SEED_TF25_RECORDED = {'tensorflow': '2.5.0',
 'keras': '2.5.0',
 'python': '3.9.18',
 'random_normal_defaults': {'tf.random_normal_initializer': 0.05,
                            'tf.compat.v1.random_normal_initializer': 1.0},
 'runs': [{'tensorflow': '2.5.0',
           'keras': '2.5.0',
           'train_step': 'compile',
           'metric': 'Accuracy',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [],
           'heldout_accuracy': [],
           'reported_metric': [],
           'reported_loss': [],
           'error': 'ValueError: Shapes (128, 10) and (128, 1) are incompatible',
           'metric_chosen': 'accuracy = Accuracy(accuracy)',
           'trace': {'y_true': [[128, 1], 'int32'],
                     'one_hot': [128, 1, 10],
                     'per_class_loss': [128, 128, 10]}},
          {'tensorflow': '2.5.0',
           'keras': '2.5.0',
           'train_step': 'override',
           'metric': 'Accuracy',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [],
           'heldout_accuracy': [],
           'reported_metric': [],
           'reported_loss': [],
           'error': 'ValueError: Shapes (128, 10) and (128, 1) are incompatible',
           'metric_chosen': 'accuracy = Accuracy(accuracy)',
           'trace': {'y_true': [[128], 'int32'], 'one_hot': [128, 10], 'per_class_loss': [128, 10]}},
          {'tensorflow': '2.5.0',
           'keras': '2.5.0',
           'train_step': 'compile',
           'metric': 'accuracy',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [10, 20, 30, 40],
           'heldout_accuracy': [0.098, 0.086, 0.086, 0.086],
           'reported_metric': [0.0969, 0.1203, 0.1047, 0.0867],
           'reported_loss': [8.2109, 8.1918, 8.1918, 8.1918],
           'metric_chosen': 'accuracy = MeanMetricWrapper(sparse_categorical_accuracy)',
           'trace': {'y_true': [[128, 1], 'int32'],
                     'one_hot': [128, 1, 10],
                     'per_class_loss': [128, 128, 10]}},
          {'tensorflow': '2.5.0',
           'keras': '2.5.0',
           'train_step': 'override',
           'metric': 'accuracy',
           'batch_size': 128,
           'W_std_initial': 0.05,
           'steps': [10, 20, 30, 40],
           'heldout_accuracy': [0.648, 0.798, 0.866, 0.878],
           'reported_metric': [0.3766, 0.7641, 0.8461, 0.8695],
           'reported_loss': [None, None, None, None],
           'metric_chosen': 'accuracy = MeanMetricWrapper(sparse_categorical_accuracy)',
           'trace': {'y_true': [[128], 'int32'], 'one_hot': [128, 10], 'per_class_loss': [128, 10]}}],
 'provenance': "recorded on 2026-12-02: capslib.pitfalls' seed_primary_capsules, seed_port_loss, "
               'seed_digit_stage, seed_port_capsnet and seed_port_run, read out of capslib/pitfalls.py with '
               'ast and executed under TensorFlow 2.5.0 (the tensorflow-cpu 2.5.0 wheel from PyPI, its own '
               'tf.keras) on Python 3.9.18, CPU; the offline MNIST digits of capslib.data.load_mnist(): the '
               'first 5,120 training digits (40 steps of batch 128), held-out accuracy on 500 test digits '
               'every 10 steps (the two runs as posted stop before their first step); random_normal_defaults '
               'is tf_random_normal_defaults() on the same installation. Re-run for 10 steps with the '
               'functions as committed, all four runs reproduce these records up to step 10 exactly.'}


# --------------------------------------------------------------------------- 2. softmax on lengths

def margin_loss_on_softmax(y_true, lengths):
    """WRONG on purpose: the margin loss applied to ``softmax(lengths)`` instead of the lengths.

    lengths ``(batch, 10)`` in [0, 1) → softmax over the classes → capslib's margin loss. With
    every length in [0, 1], the largest softmax output is e/(e + 9) ≈ 0.23 < m⁺ = 0.9, so the
    present-class term can never reach 0: the loss has a floor of (0.9 − 0.23)² ≈ 0.45.
    """
    return margin_loss(y_true, ops.softmax(lengths, axis=-1))


# --------------------------------------------------------------------------- 3. per-dimension logits

def routing_per_dimension_logits(u_hat, iterations=3, return_coupling=False):
    """WRONG on purpose: routing whose logits are kept per output *dimension*.

    u_hat: ``(batch, in_caps, out_caps, out_dim)`` = ``(batch, 1152, 10, 16)`` as for
    :func:`capslib.dynamic_routing`. Internally the port's layout ``(batch, 1152, 16, 10)``:

        b  (batch, 1152, 16, 10)   zeros                      one logit per (i, dim, j), not per (i, j)
        c  = softmax(b, over j)    (batch, 1152, 16, 10)     each of the 16 dims routed on its own
        s  = Σ_i c ⊙ û             (batch, 16, 10)
        v  = squash(s) over the 16 dims                      (capslib's squash; not the bug here)
        b += û ⊙ v                 (batch, 1152, 16, 10)     elementwise: no sum over the 16 dims

    Agreement should be the dot product û_{j|i} · v_j, one number per (i, j) that does not depend on
    how the 16 pose axes are chosen. Elementwise, each coordinate votes alone. Returns v
    ``(batch, 10, 16)``; with ``return_coupling=True`` also c ``(batch, 1152, 16, 10)``.
    """
    _, n_in, n_out, dim = static_shape(u_hat)
    u = ops.transpose(ops.cast(u_hat, "float32"), (0, 1, 3, 2))        # (batch, 1152, 16, 10)
    b = ops.zeros_like(u)
    for r in range(iterations):
        c = ops.softmax(b, axis=-1)                                     # over j, separately per dim
        s = ops.sum(c * u, axis=1)                                      # (batch, 16, 10)
        v = squash(s, axis=1)                                           # norm over the 16 dims
        if r < iterations - 1:
            b = b + u * v[:, None, :, :]                                # elementwise "agreement"
    v = ops.transpose(v, (0, 2, 1))                                     # (batch, 10, 16)
    check_shape(v, ("batch", n_out, dim), "routing_per_dimension_logits", "v")
    return (v, c) if return_coupling else v


# --------------------------------------------------------------------------- 4. squash, wrong axis

def squash_wrong_axis(s):
    """WRONG on purpose: the port's squash: reshape to ``(-1, 16, 10)``, norm over axis 2.

    s: the weighted sums in the port's layout ``(batch, 16, 10)`` (dims, classes). Axis 2 is the
    *class* axis, so each of the 16 coordinates is squashed across the 10 classes, and what comes
    out is ``(batch, 16, 10)`` — not the ``(batch, 10, 16)`` every capslib stage asserts.
    """
    s = ops.reshape(s, (-1, 16, 10))
    return squash(s, axis=2)


# --------------------------------------------------------------------------- 5. unsquashed primaries

@keras.saving.register_keras_serializable(package="capslib_pitfalls")
class UnsquashedPrimaryCaps(PrimaryCaps):
    """WRONG on purpose: :class:`capslib.PrimaryCaps` without the squash.

    pre-activation ``(batch, 6, 6, 256)`` → reshape ``(batch, 1152, 8)`` and nothing else: the primary
    capsules' lengths are whatever the convolution outputs, not probabilities in [0, 1).
    """

    def call(self, features):
        x = self.preactivation(features)                                # (batch, 6, 6, 256): conv·scale + bias
        _, oh, ow, _ = static_shape(x)
        u = ops.reshape(x, (-1, oh * ow * self.num_types, self.dim))     # (batch, 1152, 8), not squashed
        check_shape(u, ("batch", oh * ow * self.num_types, self.dim), self.name, "primary capsules")
        return u


def _capsnet_with_primary(primary_class, name, kwargs):
    """A :class:`capslib.CapsNet` (``kwargs``: its arguments) whose PrimaryCaps is replaced, before
    anything is built, by ``primary_class`` with the same sizes and initialisers."""
    from .model import CapsNet

    class CapsNetVariant(CapsNet):
        def build(self, input_shape):                # runs at the end of CapsNet.__init__
            if not isinstance(self.primary_caps, primary_class):
                p = self.primary_caps
                self.primary_caps = primary_class(p.num_types, p.dim, p.kernel_size, p.strides,
                                                  kernel_initializer=p.kernel_initializer,
                                                  bias_initializer=p.bias_initializer,
                                                  conv_scale=p.conv_scale, name=name)
            super().build(input_shape)

    return CapsNetVariant(**kwargs)


def capsnet_unsquashed_primary(**kwargs):
    """A :class:`capslib.CapsNet` (same arguments) whose PrimaryCaps does not squash."""
    return _capsnet_with_primary(UnsquashedPrimaryCaps, "primary_caps_unsquashed", kwargs)


# --------------------------------------------------------------------------- 6. batch baked in, W tiled

@keras.saving.register_keras_serializable(package="capslib_pitfalls")
class TiledDigitCaps(keras.layers.Layer):
    """WRONG on purpose: DigitCaps with the batch size frozen at build time and W tiled to it.

    Not the 2021 TF2 port's bug (it builds with batch 1, so its tile of W is ×1 and its logits
    broadcast: :func:`seed_digit_stage`); other ports' — naturomics/CapsNet-Tensorflow tiles W to
    ``cfg.batch_size`` in ``routing()`` (``capsLayer.py``), higgsfield/Capsule-Network-Tutorial
    concatenates ``batch_size`` copies of W in ``DigitCaps.forward``.

    build(``(batch, 1152, 8)``) needs a known batch and stores it: the routing logits are a
    ``zeros((batch, 1152, 10, 1))`` made once, and every call tiles W ``(1, 1152, 10, 16, 8)`` to
    ``(batch, 1152, 10, 16, 8)`` — batch × 1,474,560 floats — and u to ``(batch, 1152, 10, 8, 1)``
    before one matmul per (i, j). The maths is right (same v as :class:`capslib.DigitCaps` for the
    same W and bias); the cost is memory, and any other batch size (a last partial batch,
    ``predict`` on one image) fails. use_bias: the (10, 16) bias of :class:`capslib.DigitCaps`.
    """

    def __init__(self, num_caps=10, dim=16, routing_iterations=3, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_caps, self.dim, self.routing_iterations = num_caps, dim, routing_iterations
        self.use_bias = use_bias

    def build(self, input_shape):
        batch, self.in_caps, self.in_dim = input_shape
        if batch is None:
            raise ShapeError("ShapeError in TiledDigitCaps (u): the port's layer needs the batch size at "
                             "build time, got None")
        self.batch_size = int(batch)                                    # baked in
        self.W = self.add_weight(name="W", shape=(1, self.in_caps, self.num_caps, self.dim, self.in_dim),
                                 initializer=keras.initializers.TruncatedNormal(stddev=0.1))
        self.bias = (self.add_weight(name="bias", shape=(self.num_caps, self.dim),
                                     initializer=keras.initializers.Constant(0.1)) if self.use_bias else None)
        self.b_init = ops.zeros((self.batch_size, self.in_caps, self.num_caps, 1))   # baked in

    def set_W_from(self, digit_caps):
        """Copy a :class:`capslib.DigitCaps`' W ``(1152, 10, 16, 8)`` and bias (to compare outputs)."""
        self.W.assign(ops.expand_dims(digit_caps.W, 0))
        if self.use_bias:
            self.bias.assign(digit_caps.bias if digit_caps.bias is not None else ops.zeros_like(self.bias))

    def call(self, u):
        W = ops.tile(self.W, (self.batch_size, 1, 1, 1, 1))              # (batch, 1152, 10, 16, 8)
        u = ops.tile(u[:, :, None, :, None], (1, 1, self.num_caps, 1, 1))  # (batch, 1152, 10, 8, 1)
        u_hat = ops.squeeze(ops.matmul(W, u), -1)                        # (batch, 1152, 10, 16)
        b = self.b_init                                                  # (batch, 1152, 10, 1)
        for r in range(self.routing_iterations):
            c = ops.softmax(b, axis=2)                                   # over j
            s = ops.sum(c * u_hat, axis=1)                               # (batch, 10, 16)
            v = squash(s + self.bias if self.use_bias else s)
            if r < self.routing_iterations - 1:
                b = b + ops.sum(u_hat * v[:, None], axis=-1, keepdims=True)
        return v


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_main(variant, batch_size, in_caps):
    """Body of ``python -m capslib.pitfalls memory``: one forward + backward pass of a DigitCaps
    layer, and the process's peak resident memory during it (Linux: VmHWM, reset just before)."""
    import tensorflow as tf

    from .layers import DigitCaps
    rng = np.random.default_rng(0)
    u = tf.constant(squash(rng.normal(size=(batch_size, in_caps, 8)).astype("float32")))
    if variant == "seed":                       # the port: u tiled ×10, W ×1, v tiled ×1152 (1152 inputs only)
        weights = [tf.Variable(tf.random.normal((1, 1152, 10, 16, 8), stddev=0.05))]
        step = lambda: seed_digit_stage(tf, tf.tile(u[:, :, None, :, None], (1, 1, 10, 1, 1)), weights[0])
    else:
        layer = TiledDigitCaps() if variant == "tiled" else DigitCaps()
        layer.build((batch_size, in_caps, 8))
        weights, step = layer.trainable_variables, lambda: layer(u)
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:                       # reset the high-water mark
        f.write("5")
    with tf.GradientTape() as tape:
        out = step()                            # v (batch, 10, 16), or the port's lengths (batch, 10)
        loss = tf.reduce_sum(tf.square(out))
    grad = tape.gradient(loss, weights)
    _ = [g.numpy() for g in grad]
    peak = _rss_kib("VmHWM")
    return {"variant": variant, "batch": batch_size, "in_caps": in_caps,
            "rss_before_mib": before / 1024, "peak_mib": peak / 1024, "step_peak_mib": (peak - before) / 1024}


def measure_step_memory(variants=("capslib", "tiled"), batch_size=32, in_caps=1152, timeout=300):
    """Peak extra resident memory of one DigitCaps training step (forward + backward), one fresh
    subprocess per variant, run side by side. variants: ``"capslib"`` (:class:`capslib.DigitCaps`),
    ``"tiled"`` (:class:`TiledDigitCaps`) and/or ``"seed"`` (the port's :func:`seed_digit_stage`
    with its ×10 tile of u; 1152 inputs only). Returns ``{variant: dict}`` with
    ``step_peak_mib``, the peak resident memory during the step minus that just before it.
    Linux only (reads and resets the high-water mark in ``/proc/self``)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", KERAS_BACKEND="tensorflow")
    procs = {v: subprocess.Popen([sys.executable, "-m", "capslib.pitfalls", "memory", "--variant", v,
                                  "--batch", str(batch_size), "--in-caps", str(in_caps)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for v in variants}
    results = {}
    for v, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"the memory run ({v}) failed:\n{err[-2000:]}")
        results[v] = json.loads(out.strip().splitlines()[-1])
    return results


# --------------------------------------------------------------------------- 7. W stddev

def tf_random_normal_defaults():
    """The default standard deviations of TensorFlow's two ``random_normal_initializer`` functions, read
    from the installed TensorFlow: ``{"tensorflow": version, "tf.random_normal_initializer": 0.05,
    "tf.compat.v1.random_normal_initializer": 1.0}`` on TF 2.x (the TF2 one is what the port's
    ``tf.random_normal_initializer()`` drew W from; TF1's default was 1.0)."""
    import inspect

    import tensorflow as tf
    return {"tensorflow": tf.__version__,
            "tf.random_normal_initializer":
                inspect.signature(tf.random_normal_initializer).parameters["stddev"].default,
            "tf.compat.v1.random_normal_initializer":
                inspect.signature(tf.compat.v1.random_normal_initializer).parameters["stddev"].default}


def set_digitcaps_stddev(model, stddev, seed=0):
    """Redraw a CapsNet's DigitCaps W from a normal distribution with ``stddev`` (the port's
    ``tf.random_normal_initializer()``: 0.05 on TensorFlow 2, see :func:`tf_random_normal_defaults`;
    TF1's default and PyTorch's ``torch.randn``: 1.0).

    ``capslib.DigitCaps(kernel_initializer=...)`` takes any initializer; a whole
    :class:`capslib.CapsNet` builds its DigitCaps with its default (the official code's truncated
    normal, 0.1), so the chapter redraws W after building. Returns the model.
    """
    layer = getattr(model, "digit_caps", model)
    init = keras.initializers.RandomNormal(stddev=stddev, seed=seed)
    layer.W.assign(init(tuple(layer.W.shape)))
    return model


# --------------------------------------------------------------------------- 8. softmax over inputs

def routing_softmax_over_inputs(u_hat, iterations=3, return_coupling=False):
    """WRONG on purpose: dynamic routing with the coupling softmax taken over the inputs i.

    u_hat ``(batch, 1152, 10, 16)``; b ``(batch, 1152, 10)``; ``c = softmax(b, axis=1)`` — over the
    1152 *input* capsules instead of the 10 outputs (axis 2). Each output capsule's couplings then
    sum to 1 over the inputs (an average of 1152 votes, each ≈ 1/1152 at first), while an input
    capsule's couplings no longer sum to 1: it is no longer splitting its vote among the parents.
    Returns v ``(batch, 10, 16)``; with ``return_coupling=True`` also c ``(batch, 1152, 10)``.
    """
    _, n_in, n_out, dim = static_shape(u_hat)
    u_hat = ops.cast(u_hat, "float32")
    b = ops.zeros_like(u_hat[..., 0])                                   # (batch, 1152, 10)
    for r in range(iterations):
        c = ops.softmax(b, axis=1)                                      # over i: the bug
        s = ops.einsum("bij,bijd->bjd", c, u_hat)                       # (batch, 10, 16)
        v = squash(s)
        if r < iterations - 1:
            b = b + ops.einsum("bijd,bjd->bij", u_hat, v)
    check_shape(v, ("batch", n_out, dim), "routing_softmax_over_inputs", "v")
    return (v, c) if return_coupling else v


# --------------------------------------------------------------------------- 9. primary capsules across positions

@keras.saving.register_keras_serializable(package="capslib_pitfalls")
class SeedGroupingPrimaryCaps(PrimaryCaps):
    """WRONG on purpose: :class:`capslib.PrimaryCaps` with the port's regrouping.

    conv ``(batch, 6, 6, 256)`` → :func:`seed_primary_capsules` ``(batch, 1152, 8)`` → squash
    (capslib's; the port did not squash, pitfall 5 — kept here so that only the grouping
    differs). Each "capsule" is then one channel at 8 neighbouring positions, not 8 channels at
    one position.
    """

    def call(self, features):
        x = self.preactivation(features)                                # (batch, 6, 6, 256): conv·scale + bias
        u = squash(seed_primary_capsules(ops, x, self.num_types, self.dim))   # (batch, 1152, 8)
        check_shape(u, ("batch", static_shape(x)[1] * static_shape(x)[2] * self.num_types, self.dim),
                    self.name, "primary capsules", ("batch", "in_caps", "in_dim"))
        return u


def capsnet_seed_grouping(**kwargs):
    """A :class:`capslib.CapsNet` (same arguments) whose PrimaryCaps groups the conv channels the
    port's way (:class:`SeedGroupingPrimaryCaps`)."""
    return _capsnet_with_primary(SeedGroupingPrimaryCaps, "primary_caps_seed_grouping", kwargs)


# --------------------------------------------------------------------------- a short training run

def train_briefly(model, x, y_onehot, x_test, y_test, steps=60, batch_size=32, eval_every=20,
                  loss=None, learning_rate=1e-3):
    """Train ``model`` (a :class:`capslib.CapsNet`) for ``steps`` steps with ``fit`` and return
    ``{"steps", "loss", "heldout_accuracy"}`` measured every ``eval_every`` steps (held-out accuracy:
    argmax of the lengths on ``x_test``). ``loss``: the compiled loss (default capslib's margin loss).
    Not a pitfall: the chapter's common yardstick for the wrong variants."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss or margin_loss)
    out = {"steps": [], "loss": [], "heldout_accuracy": []}
    per_chunk = eval_every * batch_size
    for start in range(0, steps * batch_size, per_chunk):
        h = model.fit(x[start:start + per_chunk], y_onehot[start:start + per_chunk], batch_size=batch_size,
                      epochs=1, verbose=0, shuffle=False)
        lengths = np.asarray(model.predict(x_test, batch_size=250, verbose=0)[0])
        out["steps"].append(min(start + per_chunk, steps * batch_size) // batch_size)
        out["loss"].append(float(h.history["loss"][-1]))
        out["heldout_accuracy"].append(float(np.mean(lengths.argmax(-1) == y_test)))
    return out


# --------------------------------------------------------------------------- command line

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m capslib.pitfalls",
                                     description="Subprocess entry points for the pitfalls chapter.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    k2 = sub.add_parser("keras2", help="pitfall 1 under Keras 2 (needs tf-keras, TF_USE_LEGACY_KERAS=1)")
    k2.add_argument("--npz", required=True)
    k2.add_argument("--steps", type=int, default=150)
    sd = sub.add_parser("seed", help="the port's own network under Keras 2 (needs tf-keras, TF_USE_LEGACY_KERAS=1)")
    sd.add_argument("--npz", required=True)
    sd.add_argument("--steps", type=int, default=24)
    sd.add_argument("--eval-every", type=int, default=8)
    sd.add_argument("--runs", nargs="+", default=[f"{t}:{m}" for t, m in SEED_RUNS],
                    help="train_step:metric pairs, e.g. compile:Accuracy override:Accuracy")
    mem = sub.add_parser("memory", help="peak memory of one DigitCaps training step")
    mem.add_argument("--variant", choices=("capslib", "tiled", "seed"), required=True)
    mem.add_argument("--batch", type=int, default=32)
    mem.add_argument("--in-caps", type=int, default=1152)
    args = parser.parse_args(argv)
    if args.cmd == "keras2":
        result = _keras2_main(args.npz, args.steps)
    elif args.cmd == "seed":
        result = _seed_main(args.npz, args.steps, args.eval_every, [tuple(r.split(":", 1)) for r in args.runs])
    else:
        result = _memory_main(args.variant, args.batch, args.in_caps)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
