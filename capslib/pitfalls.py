"""DELIBERATELY WRONG variants for the pitfalls chapter — never use them to train.

Every function and layer in this module reproduces, on purpose, one bug that CapsNet ports
shipped (a widely read 2021 TF2 port among them) so that ``book/08_pitfalls.ipynb`` and
``tests/test_pitfalls.py`` can show its symptom next to capslib's correct version. Everything
that is *not* the bug is capslib's own piece (squash, margin_loss, PrimaryCaps, DigitCaps, …),
imported, never copied, so each variant differs from capslib in exactly one place.

=====  ==========================================  =====================================  ==============================
 #      pitfall                                     wrong variant here                     correct (capslib)
=====  ==========================================  =====================================  ==============================
 1      integer labels into a loss that one-hots    ``port_margin_loss``                   ``margin_loss`` + one-hot labels
        them inside; ``metrics=["Accuracy"]``       ``compile_path_demo``                  ``"categorical_accuracy"``
 2      softmax on the capsule lengths              ``margin_loss_on_softmax``             ``margin_loss`` on the lengths
 3      routing logits per output dimension         ``routing_per_dimension_logits``       ``dynamic_routing``
 4      squash over the class axis                  ``squash_wrong_axis``                  ``squash`` over the 16 dims
 5      primary capsules not squashed               ``UnsquashedPrimaryCaps``              ``PrimaryCaps``
 6      batch baked in at build time, W tiled       ``TiledDigitCaps``                     ``DigitCaps``
 7      W drawn with stddev 1.0                     ``set_digitcaps_stddev``               ``DigitCaps`` (stddev 0.01)
 8      routing softmax over the inputs i           ``routing_softmax_over_inputs``        ``dynamic_routing``
=====  ==========================================  =====================================  ==============================

``python -m capslib.pitfalls keras2`` runs pitfall 1 under Keras 2 (the ``tf-keras`` package,
``TF_USE_LEGACY_KERAS=1``) and prints JSON; ``python -m capslib.pitfalls memory --variant tiled``
measures one DigitCaps training step's peak memory. Both are run in a subprocess by the chapter.
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
    "set_digitcaps_stddev", "routing_softmax_over_inputs", "train_briefly",
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

    conv ``(batch, 6, 6, 256)`` → reshape ``(batch, 1152, 8)`` and nothing else: the primary
    capsules' lengths are whatever the convolution outputs, not probabilities in [0, 1).
    """

    def call(self, features):
        x = self.conv(features)                                         # (batch, 6, 6, 256)
        _, oh, ow, _ = static_shape(x)
        u = ops.reshape(x, (-1, oh * ow * self.num_types, self.dim))     # (batch, 1152, 8), not squashed
        check_shape(u, ("batch", oh * ow * self.num_types, self.dim), self.name, "primary capsules")
        return u


def capsnet_unsquashed_primary(**kwargs):
    """A :class:`capslib.CapsNet` (same arguments) whose PrimaryCaps does not squash."""
    from .model import CapsNet

    class CapsNetUnsquashedPrimary(CapsNet):
        def build(self, input_shape):                # runs at the end of CapsNet.__init__
            if not isinstance(self.primary_caps, UnsquashedPrimaryCaps):
                p = self.primary_caps
                self.primary_caps = UnsquashedPrimaryCaps(p.num_types, p.dim, p.kernel_size, p.strides,
                                                          name="primary_caps_unsquashed")
            super().build(input_shape)

    return CapsNetUnsquashedPrimary(**kwargs)


# --------------------------------------------------------------------------- 6. batch baked in, W tiled

@keras.saving.register_keras_serializable(package="capslib_pitfalls")
class TiledDigitCaps(keras.layers.Layer):
    """WRONG on purpose: DigitCaps with the batch size frozen at build time and W tiled to it.

    build(``(batch, 1152, 8)``) needs a known batch and stores it: the routing logits are a
    ``zeros((batch, 1152, 10, 1))`` made once, and every call tiles W ``(1, 1152, 10, 16, 8)`` to
    ``(batch, 1152, 10, 16, 8)`` — batch × 1,474,560 floats — and u to ``(batch, 1152, 10, 8, 1)``
    before one matmul per (i, j). The maths is right (same v as :class:`capslib.DigitCaps` for the
    same W); the cost is memory, and any other batch size (a last partial batch, ``predict`` on
    one image) fails.
    """

    def __init__(self, num_caps=10, dim=16, routing_iterations=3, **kwargs):
        super().__init__(**kwargs)
        self.num_caps, self.dim, self.routing_iterations = num_caps, dim, routing_iterations

    def build(self, input_shape):
        batch, self.in_caps, self.in_dim = input_shape
        if batch is None:
            raise ShapeError("ShapeError in TiledDigitCaps (u): the port's layer needs the batch size at "
                             "build time, got None")
        self.batch_size = int(batch)                                    # baked in
        self.W = self.add_weight(name="W", shape=(1, self.in_caps, self.num_caps, self.dim, self.in_dim),
                                 initializer=keras.initializers.TruncatedNormal(stddev=0.01))
        self.b_init = ops.zeros((self.batch_size, self.in_caps, self.num_caps, 1))   # baked in

    def set_W_from(self, digit_caps):
        """Copy a :class:`capslib.DigitCaps`' W ``(1152, 10, 16, 8)`` (to compare outputs)."""
        self.W.assign(ops.expand_dims(digit_caps.W, 0))

    def call(self, u):
        W = ops.tile(self.W, (self.batch_size, 1, 1, 1, 1))              # (batch, 1152, 10, 16, 8)
        u = ops.tile(u[:, :, None, :, None], (1, 1, self.num_caps, 1, 1))  # (batch, 1152, 10, 8, 1)
        u_hat = ops.squeeze(ops.matmul(W, u), -1)                        # (batch, 1152, 10, 16)
        b = self.b_init                                                  # (batch, 1152, 10, 1)
        for r in range(self.routing_iterations):
            c = ops.softmax(b, axis=2)                                   # over j
            s = ops.sum(c * u_hat, axis=1)                               # (batch, 10, 16)
            v = squash(s)
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
    layer = TiledDigitCaps() if variant == "tiled" else DigitCaps()
    layer.build((batch_size, in_caps, 8))
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:                       # reset the high-water mark
        f.write("5")
    with tf.GradientTape() as tape:
        v = layer(u)
        loss = tf.reduce_sum(tf.square(v))
    grad = tape.gradient(loss, layer.trainable_variables)
    _ = [g.numpy() for g in grad]
    peak = _rss_kib("VmHWM")
    return {"variant": variant, "batch": batch_size, "in_caps": in_caps,
            "rss_before_mib": before / 1024, "peak_mib": peak / 1024, "step_peak_mib": (peak - before) / 1024}


def measure_step_memory(variants=("capslib", "tiled"), batch_size=32, in_caps=1152, timeout=300):
    """Peak extra resident memory of one DigitCaps training step (forward + backward), one fresh
    subprocess per variant, run side by side. variants: ``"capslib"`` (:class:`capslib.DigitCaps`)
    and/or ``"tiled"`` (:class:`TiledDigitCaps`). Returns ``{variant: dict}`` with
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

def set_digitcaps_stddev(model, stddev, seed=0):
    """Redraw a CapsNet's DigitCaps W from a normal distribution with ``stddev`` (the port: 1.0).

    ``capslib.DigitCaps(kernel_initializer=...)`` takes any initializer; a whole
    :class:`capslib.CapsNet` builds its DigitCaps with the default (truncated normal, 0.01), so
    the chapter redraws W after building. Returns the model.
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
    mem = sub.add_parser("memory", help="peak memory of one DigitCaps training step")
    mem.add_argument("--variant", choices=("capslib", "tiled"), required=True)
    mem.add_argument("--batch", type=int, default=32)
    mem.add_argument("--in-caps", type=int, default=1152)
    args = parser.parse_args(argv)
    if args.cmd == "keras2":
        result = _keras2_main(args.npz, args.steps)
    else:
        result = _memory_main(args.variant, args.batch, args.in_caps)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
