"""What a trained CapsNet does, measured: the numbers the book, the benchmarks and the reference
models' records report, computed one way everywhere.

==========================  ==================================================  ======================
function                    measures                                            returns
==========================  ==================================================  ======================
``predict_lengths``         capsule lengths, in batches                         ``(n, classes)``
``accuracy``                share of images whose longest capsule is the label  float in [0, 1]
``reconstruction_error``    mean squared pixel error of the decoder fed the     float (per pixel)
                            longest capsule (no labels, as at test time)
``perturbation_effect``     the paper's Fig. 4 as a number: mean |pixel         ``(n, dims)``
                            change| between a dimension at +0.25 and −0.25
``coupling_spread``         how far routing moves the couplings from uniform    dict of floats
``summary``                 all of the above on one held-out set                dict (JSON-ready)
==========================  ==================================================  ======================

Images are ``(n, H, W, 1)`` floats in [0, 1]; labels are integers ``(n,)``.
"""

from __future__ import annotations

import keras
import numpy as np

from .ops import dynamic_routing

__all__ = ["predict_lengths", "accuracy", "reconstruction_error", "perturbation_effect",
           "coupling_spread", "summary", "DELTAS"]

# The paper's Fig. 4: "tweak one dimension by intervals of 0.05 in the range [−0.25, 0.25]".
DELTAS = np.round(np.linspace(-0.25, 0.25, 11), 2)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _batches(n, batch_size):
    return (slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


def predict_lengths(model, images, batch_size=256):
    """Capsule lengths ``(n, classes)`` of ``model`` (a CapsNet) on ``images``, float32."""
    return np.concatenate([_np(model.length(model.encode(images[s]))) for s in _batches(len(images), batch_size)])


def accuracy(model, images, labels, batch_size=256):
    """Share of ``images`` whose longest capsule is the integer label."""
    return float(np.mean(predict_lengths(model, images, batch_size).argmax(-1) == np.asarray(labels)))


def reconstruction_error(model, images, batch_size=256):
    """Mean over images and pixels of (image − reconstruction)², the decoder fed the longest
    capsule (what the model draws with no label, as in the book's figures)."""
    total = 0.0
    for s in _batches(len(images), batch_size):
        recon = _np(model.decode(model.encode(images[s])))
        total += float(np.sum((images[s] - recon) ** 2))
    return total / images.size


def perturbation_effect(model, images, batch_size=64):
    """The paper's Fig. 4, one number per (image, dimension): each dimension of the winning
    capsule moved to −0.25 and to +0.25 (nothing else changed), both decoded, and the mean
    |pixel difference| between the two drawings. Returns ``(n, digit_dim)``."""
    out = []
    for s in _batches(len(images), batch_size):
        v = _np(model.encode(images[s]))                                 # (b, classes, dims)
        b, n_caps, dims = v.shape
        win = np.linalg.norm(v, axis=-1).argmax(-1)                      # (b,)
        caps = np.repeat(v[:, None, None], dims, 1).repeat(2, 2)         # (b, dims, 2, classes, dims)
        for d in range(dims):
            for k, delta in enumerate((DELTAS[0], DELTAS[-1])):
                caps[np.arange(b), d, k, win, d] += delta
        labels = np.eye(n_caps, dtype="float32")[np.repeat(win, dims * 2)]
        drawn = _np(model.decode(caps.reshape(-1, n_caps, dims).astype("float32"), labels))
        drawn = drawn.reshape(b, dims, 2, -1)
        out.append(np.abs(drawn[:, :, 1] - drawn[:, :, 0]).mean(-1))    # (b, dims)
    return np.concatenate(out)


def coupling_spread(model, images, batch_size=64):
    """How far routing's last iteration moves the couplings c_ij from uniform (1/classes), on
    ``images``: ``max`` and ``mean`` of |c − 1/classes| over all (image, i, j), and
    ``top_weighted``: the mean coupling of each primary capsule to the predicted class, weighted
    by the capsule's length (1/classes if routing changed nothing)."""
    caps = model.digit_caps
    worst, total, count, top_num, top_den = 0.0, 0.0, 0, 0.0, 0.0
    for s in _batches(len(images), batch_size):
        u = model.primary_caps(model.conv1(images[s]))                   # (b, in_caps, in_dim)
        v, c = dynamic_routing(caps.predictions(u), caps.routing_iterations, return_coupling=True,
                               out_major=True, bias=caps.bias)
        c, v, u_len = _np(c), _np(v), np.linalg.norm(_np(u), axis=-1)   # c (b, in_caps, classes)
        dev = np.abs(c - 1.0 / c.shape[-1])
        worst, total, count = max(worst, float(dev.max())), total + float(dev.sum()), count + dev.size
        win = np.linalg.norm(v, axis=-1).argmax(-1)                      # (b,)
        c_win = c[np.arange(len(win)), :, win]                           # (b, in_caps)
        top_num += float((c_win * u_len).sum())
        top_den += float(u_len.sum())
    return {"max": worst, "mean": total / count, "top_weighted": top_num / top_den}


def summary(model, images, labels, n_perturb=100):
    """Accuracy, reconstruction error, Fig. 4 effect (on the first ``n_perturb`` images) and
    coupling spread on one held-out set, as a JSON-ready dict."""
    effect = perturbation_effect(model, images[:n_perturb])
    return {"accuracy": accuracy(model, images, labels),
            "reconstruction_mse": reconstruction_error(model, images),
            "fig4_effect_max": float(effect.max()),
            "fig4_effect_mean_of_max": float(effect.max(-1).mean()),
            "couplings": coupling_spread(model, images[:n_perturb])}
