"""Quick or full mode, and which machine produced an output — for the book's notes.

The book's chapters train models. ``CAPSBOOK_QUICK=1`` (CI sets it) makes them train on a small
subset for a short time so the whole book executes in minutes on a CPU; unset, they run the
full experiment, which is what a reader on a GPU should do. Every page that trains prints
:func:`describe` so the reader knows which mode, data and machine produced what they see.
"""

from __future__ import annotations

import os

import keras

__all__ = ["quick", "device_description", "describe"]


def quick() -> bool:
    """True when ``CAPSBOOK_QUICK`` is set to anything but ``""``/``0``/``false``/``no``."""
    return os.environ.get("CAPSBOOK_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def device_description() -> str:
    """``"GPU (NVIDIA H200) via jax"``, ``"CPU (2 cores) via tensorflow"``, …"""
    backend = keras.backend.backend()
    gpus = []
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            gpus = [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                    for d in tf.config.list_physical_devices("GPU")]
        elif backend == "jax":
            import jax
            gpus = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        elif backend == "torch":
            import torch
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken GPU stack is the doctor's business; here we only describe
        gpus = []
    if gpus:
        return f"GPU ({', '.join(gpus)}) via {backend}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({cores} cores) via {backend}"


def describe(data: str, epochs: int) -> str:
    """One line for a page that trains, e.g.
    ``"quick mode (CAPSBOOK_QUICK=1): offline MNIST subset …; 1 epoch; CPU (2 cores) via tensorflow"``."""
    mode = "quick mode (CAPSBOOK_QUICK=1)" if quick() else "full mode"
    return f"{mode}: {data}; {epochs} epoch{'s' if epochs != 1 else ''}; {device_description()}"
