"""Quick or full mode, and which machine and model produced an output — for the book's notes.

The book's chapters train models. Two modes:

- **quick** — what a CPU can do in minutes. The chapters that *look at* a trained CapsNet
  (feature maps, couplings, reconstructions, Fig. 4, the affine and MultiMNIST results) use the
  shipped reference models (:mod:`capslib.pretrained`); the chapters *about* training (7, the
  pitfalls) run short live demonstrations on a small subset.
- **full** — what a GPU reader runs: every model is trained afresh, at the paper's sizes.

Which one: ``CAPSBOOK_MODE=quick`` or ``full`` forces it; ``CAPSBOOK_QUICK=1`` (what CI sets) is
the same as ``quick`` and ``CAPSBOOK_QUICK=0`` as ``full``; otherwise (``auto``) full when the
Keras backend sees a GPU, quick when it does not. Every page that shows a model's output prints
:func:`describe` or :func:`model_note`, so the reader knows which mode, data, model and machine
produced it.
"""

from __future__ import annotations

import functools
import os

import keras

__all__ = ["mode", "quick", "mode_reason", "device_description", "describe", "model_note", "model_label",
           "book_banner"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _gpus():
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                    for d in tf.config.list_physical_devices("GPU")]
        if backend == "jax":
            import jax
            return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        if backend == "torch":
            import torch
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken GPU stack is the doctor's business; here we only describe
        pass
    return []


@functools.lru_cache(maxsize=None)
def _gpus_cached():
    return tuple(_gpus())


def _resolve():
    """``(mode, reason)`` from the environment (read on every call, so a notebook can change it)."""
    explicit = os.environ.get("CAPSBOOK_MODE", "").strip().lower()
    if explicit in ("quick", "full"):
        return explicit, f"CAPSBOOK_MODE={explicit}"
    if explicit not in ("", "auto"):
        raise ValueError(f"CAPSBOOK_MODE must be quick, full or auto, got {explicit!r}")
    legacy = os.environ.get("CAPSBOOK_QUICK", "").strip().lower()
    if legacy in _TRUE:
        return "quick", f"CAPSBOOK_QUICK={legacy}"
    if legacy in _FALSE:
        return "full", f"CAPSBOOK_QUICK={legacy}"
    if legacy:
        raise ValueError(f"CAPSBOOK_QUICK must be 1 or 0 (or unset), got {legacy!r}")
    gpus = _gpus_cached()
    return ("full", f"auto: GPU found ({', '.join(gpus)})") if gpus else ("quick", "auto: no GPU found")


def mode() -> str:
    """``"quick"`` or ``"full"`` (see the module's docstring)."""
    return _resolve()[0]


def quick() -> bool:
    """True in quick mode."""
    return mode() == "quick"


def mode_reason() -> str:
    """Why this mode: ``"CAPSBOOK_QUICK=1"``, ``"auto: no GPU found"``, …"""
    return _resolve()[1]


def device_description() -> str:
    """``"GPU (NVIDIA H200) via jax"``, ``"CPU (2 cores) via tensorflow"``, …"""
    gpus = _gpus_cached()
    backend = keras.backend.backend()
    if gpus:
        return f"GPU ({', '.join(gpus)}) via {backend}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({cores} cores) via {backend}"


def describe(data: str, epochs: int) -> str:
    """One line for a page that trains live, e.g. ``"quick mode (CAPSBOOK_QUICK=1): offline MNIST
    subset …; 1 epoch; trained on this page on CPU (2 cores) via tensorflow"``."""
    m, why = _resolve()
    return (f"{m} mode ({why}): {data}; {epochs} epoch{'s' if epochs != 1 else ''}; "
            f"trained on this page on {device_description()}")


def _metric(key):
    """``heldout_accuracy`` → ``accuracy``, ``translated_accuracy`` → ``translated``, …"""
    return {"heldout_accuracy": "accuracy"}.get(key, key.replace("_accuracy", "").replace("_", " "))


def model_note(record) -> str:
    """One line naming the model a figure comes from: a shipped reference model (its record from
    :func:`capslib.pretrained.load`), or a model trained by this build (a ``capslib.train`` history)."""
    if "weights" in record:                                   # a reference model's record
        t, ev = record["training"], record["evaluation"]
        score = ", ".join(f"{_metric(k)} {100 * v:.2f}%" for k, v in ev.items() if isinstance(v, float))
        env = t["environment"]
        stage = t.get("decoder_stage")
        then = (f", then its decoder alone for {stage['epochs']} epochs (capsules frozen)" if stage else "")
        return (f"reference model `{record['name']}` ({record['parameters']:,} parameters): trained by "
                f"`{t['command'].split('  ')[0]}`, {t['epochs_run']} epochs on {t['data'].split(';')[0]}{then}; "
                f"{score} on held-out data; {env['device']}, {env['date']}, commit {str(env['commit'])[:7]}")
    last = record["epochs"][-1]
    acc = last.get("val_categorical_accuracy")
    return (describe(record["data"], len(record["epochs"])).replace("trained on this page", "trained by this build")
            + (f"; held-out accuracy {100 * acc:.2f}%" if acc is not None else ""))


def model_label(record) -> str:
    """A few words for a figure title: ``"reference model `mnist` (23 epochs, held-out 99.10%)"`` or
    ``"model trained by this build (10 epochs, held-out 99.02%)"``; :func:`model_note` says the rest."""
    if "weights" in record:
        first = next(v for v in record["evaluation"].values() if isinstance(v, float))
        return (f"reference model `{record['name']}` ({record['training']['epochs_run']} epochs, "
                f"held-out {100 * first:.2f}%)")
    acc = record["epochs"][-1].get("val_categorical_accuracy")
    return (f"model trained by this build ({len(record['epochs'])} epochs"
            + (f", held-out {100 * acc:.2f}%)" if acc is not None else ")"))


def book_banner() -> str:
    """The one line ``make book`` prints before it builds: which mode, why, and what that means."""
    m, why = _resolve()
    what = ("the shipped reference models for the chapters that look at a trained CapsNet, short live "
            "training runs in chapters 7 and 8" if m == "quick" else
            "every model trained afresh on this machine, at the paper's sizes (hours without a GPU)")
    other = "full" if m == "quick" else "quick"
    return f"make book: {m} mode ({why}) on {device_description()}: {what}. CAPSBOOK_MODE={other} forces {other} mode."

