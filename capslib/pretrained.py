"""Reference models: trained once by our own command, shipped with capslib, verified in CI.

    model, record = capslib.pretrained.load("mnist")

The book is mostly read as a web page built on two CPU cores, where its chapters cannot train a
CapsNet properly. These models were trained by ``make reference-models`` (which runs
``python -m capslib.pretrained train all`` then ``… export all``) and are stored in
``capslib/reference/`` as float16 weights (``<name>.npz``, NumPy arrays only, read with
``allow_pickle=False``) beside a record (``<name>.json``): the command, commit, data, epochs,
machine, date, every epoch's metrics, and what the shipped weights score on held-out data.

===================  ===========================================================  ========================
name                 model                                                        scored on (held-out)
===================  ===========================================================  ========================
``mnist``            the paper's CapsNet, ``capslib.CapsNet()`` (28×28)            the 2,004 offline digits
``affine_capsnet``   CapsNet on 40×40, narrower (conv1 64, 8 primary types)       those digits at random
                                                                                  places on 40×40, and
                                                                                  under random affine
                                                                                  transforms
``affine_cnn``       ``capslib.baseline.baseline_cnn`` with as many parameters    the same two sets
``multimnist``       ``MultiDigitCapsNet`` on 36×36, narrower (conv1 64, 8 types)  2,004 MultiMNIST pairs
===================  ===========================================================  ========================

All four train on the 7,996 offline training digits (``capslib.data``), with the paper's optimizer
(Adam 1e-3, ×0.96 every 2,000 steps), batch 128, until the held-out score has not improved for
``patience`` epochs (or ``max_epochs``); the last epoch's weights are shipped, not the best one.
``mnist`` then has a second stage, :func:`train_decoder`: its decoder alone, the capsules frozen,
for many more steps than the joint training could afford on a CPU (its record holds both stages).

:func:`load` checks the file's SHA-256 against the record and every array's name and shape against
the architecture capslib builds today; anything missing, corrupt or mismatched raises
:class:`ReferenceModelError` naming the file and the command that makes it again.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from . import data as capsdata
from . import evaluate
from .baseline import baseline_cnn, matched_first_dense
from .datasets import MultiDigitCapsNet, affine_mnist, multi_mnist, pad_to_canvas, two_digit_accuracy
from .losses import margin_loss
from .model import CapsNet
from .train import ShiftedBatches, TrainConfig, make_optimizer

__all__ = ["NAMES", "SPECS", "ReferenceModelError", "load", "book_model", "verify", "evaluate_model", "train",
           "export", "reference_dir", "main"]

REBUILD = "make reference-models"                 # the one command that trains and exports them all
_NARROW = {"conv_filters": 64, "primary_types": 8}

# What each reference model is and how it is trained. ``metric`` is the held-out score that
# decides when training stops and that CI re-measures.
# max_epochs is what one session on 2 CPU cores affords (~3 hours for all four, run two at a
# time); the records show each model's curve, so a reader sees where it was still improving.
SPECS = {
    "mnist": {
        "description": "the paper's CapsNet (28×28, capslib's defaults: official initialisation, "
                       "(10, 16) DigitCaps bias, 3 routing iterations)",
        "arch": {"class": "CapsNet", "kwargs": {}},
        "data": "±2 px random shifts of the 7,996 offline training digits, new each epoch",
        "max_epochs": 22, "patience": 6, "metric": "heldout_accuracy",
        "decoder_stage": {"epochs": 100, "copies": 4}},   # then the decoder alone: see train_decoder
    "affine_capsnet": {
        "description": "CapsNet on 40×40, narrower than the paper's (conv1 64 filters, 8 primary "
                       "types: 12·12·8 = 1,152 primary capsules) to train on 2 CPU cores",
        "arch": {"class": "CapsNet", "kwargs": {"input_shape": [40, 40, 1], **_NARROW}},
        "data": "the 7,996 offline training digits, each at a random place on a 40×40 canvas "
                "(shifts up to ±6 px), new places each epoch",
        "max_epochs": 30, "patience": 6, "metric": "translated_accuracy"},
    "affine_cnn": {
        "description": "baseline CNN on 40×40 (conv 64, 64, 32 @5×5, max-pooling, dense, dropout), "
                       "first dense layer sized to affine_capsnet's parameter count",
        "arch": {"class": "baseline_cnn", "kwargs": {"input_shape": [40, 40, 1], "channels": [64, 64, 32]}},
        "data": "the 7,996 offline training digits, each at a random place on a 40×40 canvas "
                "(shifts up to ±6 px), new places each epoch: the same canvases as affine_capsnet",
        "max_epochs": 30, "patience": 6, "metric": "translated_accuracy"},
    "multimnist": {
        "description": "MultiDigitCapsNet on 36×36, narrower than the paper's (conv1 64 filters, 8 primary "
                       "types: 10·10·8 = 800 primary capsules)",
        "arch": {"class": "MultiDigitCapsNet", "kwargs": {"input_shape": [36, 36, 1], **_NARROW}},
        "data": "10,000 fresh MultiMNIST pairs of the 7,996 offline training digits each epoch",
        "pairs_per_epoch": 10000, "max_epochs": 12, "patience": 4, "metric": "both_digits_accuracy"},
}
NAMES = tuple(SPECS)
SEED, BATCH_SIZE = 0, 128


class ReferenceModelError(RuntimeError):
    """A reference model's files are missing, corrupt, or do not fit today's architecture."""


def reference_dir() -> Path:
    """Where the shipped files live: ``$CAPSLIB_REFERENCE_DIR`` if set, else ``capslib/reference``."""
    return Path(os.environ.get("CAPSLIB_REFERENCE_DIR") or Path(__file__).with_name("reference"))


def _check_name(name):
    if name not in SPECS:
        raise ValueError(f"unknown reference model {name!r}; choose from {', '.join(NAMES)}")


# --------------------------------------------------------------------------- building


def _arch(name):
    """The architecture of ``name`` as stored in its record: ``{"class", "kwargs"}``; the CNN's
    first dense width is computed to match affine_capsnet's parameter count."""
    arch = json.loads(json.dumps(SPECS[name]["arch"]))
    if arch["class"] == "baseline_cnn":
        caps = _build(SPECS["affine_capsnet"]["arch"])
        kw = arch["kwargs"]
        kw["dense"] = [matched_first_dense(caps.count_params(), kw["input_shape"], kw["channels"]), 192]
    return arch


def _build(arch):
    kwargs = dict(arch["kwargs"])
    if "input_shape" in kwargs:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    if arch["class"] == "CapsNet":
        return CapsNet(**kwargs)
    if arch["class"] == "MultiDigitCapsNet":
        return MultiDigitCapsNet(**kwargs)
    if arch["class"] == "baseline_cnn":
        return baseline_cnn(kwargs["input_shape"], tuple(kwargs["channels"]), tuple(kwargs["dense"]))
    raise ReferenceModelError(f"unknown architecture class {arch['class']!r}")


def _compile(model):
    optimizer = make_optimizer(TrainConfig())                  # Adam 1e-3, ×0.96 every 2,000 steps
    if isinstance(model, MultiDigitCapsNet):
        model.compile(optimizer=optimizer, jit_compile=False)
    elif isinstance(model, CapsNet):
        model.compile(optimizer=optimizer, loss=margin_loss, metrics=["categorical_accuracy"], jit_compile=False)
    else:
        model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["categorical_accuracy"],
                      jit_compile=False)
    return model


def _keys(model):
    """``{key: variable}`` with keys like ``conv1/kernel``: the path from the model's own layer,
    without the model's name (which Keras numbers, and leaves out of a reloaded model's paths)."""
    layers = {layer.name for layer in model.layers}
    keys = {}
    for v in model.weights:
        parts = v.path.split("/")
        while len(parts) > 1 and parts[0] not in layers:
            parts = parts[1:]
        keys["/".join(parts)] = v
    if len(keys) != len(model.weights):
        raise ReferenceModelError(f"{model.name}: two weights share a name; cannot store them by name")
    return keys


# --------------------------------------------------------------------------- loading


def load(name, directory=None):
    """``(model, record)`` for the reference model ``name`` (see :data:`NAMES`).

    The model is built with today's capslib, then given the shipped float16 weights (as float32).
    Raises :class:`ReferenceModelError` if a file is missing, its SHA-256 differs from the record,
    or an array's name or shape does not fit the architecture.
    """
    _check_name(name)
    folder = Path(directory) if directory else reference_dir()
    rec_path, npz_path = folder / f"{name}.json", folder / f"{name}.npz"
    for path in (rec_path, npz_path):
        if not path.exists():
            raise ReferenceModelError(f"{path}: missing. The reference models are part of the repository "
                                      f"(restore with `git checkout -- {path.name}` in {folder}) or are made "
                                      f"again by `{REBUILD}` (hours on a CPU).")
    record = json.loads(rec_path.read_text())
    blob = npz_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record["weights"]["sha256"]:
        raise ReferenceModelError(f"{npz_path}: SHA-256 {digest[:16]}… does not match {rec_path.name}'s "
                                  f"{record['weights']['sha256'][:16]}…: the file is corrupt or was changed. "
                                  f"Restore it (`git checkout -- {npz_path.name}`) or run `{REBUILD}`.")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    model = _build(record["architecture"])
    _assign(model, arrays, npz_path)
    return model, record


def _assign(model, arrays, source):
    """Give ``model`` the ``arrays`` (keyed like :func:`_key`), checking names and shapes first."""
    variables = _keys(model)
    wanted = {k: tuple(v.shape) for k, v in variables.items()}
    problems = [f"{k}: the file has {arrays[k].shape}, capslib builds {shape}"
                for k, shape in wanted.items() if k in arrays and arrays[k].shape != shape]
    problems += [f"{k}: not in the file" for k in wanted if k not in arrays]
    problems += [f"{k}: in the file, but capslib's model has no such weight" for k in arrays if k not in wanted]
    if problems:
        raise ReferenceModelError(f"{source}: does not fit the architecture capslib builds today "
                                  f"({len(problems)} problem(s)): " + "; ".join(problems[:6])
                                  + f". Retrain with `{REBUILD}`.")
    for k, v in variables.items():
        if not np.all(np.isfinite(arrays[k])):
            raise ReferenceModelError(f"{source}: {k} holds NaN or inf")
        v.assign(arrays[k].astype("float32"))


def book_model(verbose=0):
    """``(model, record)`` for the chapters that look at a trained CapsNet: the reference model
    ``mnist`` in quick mode; in full mode (a GPU), the paper's CapsNet trained by this build for
    10 epochs on all the training digits (:func:`capslib.train.book_trained_model`).
    :func:`capslib.runmode.model_note` describes either record in one line."""
    from .runmode import quick
    from .train import book_trained_model
    return load("mnist") if quick() else book_trained_model(verbose)


# --------------------------------------------------------------------------- held-out scores


@functools.lru_cache(maxsize=None)
def _heldout(kind):
    """The held-out sets, made the same way on every machine (seeded)."""
    ds = capsdata.load_mnist()
    if kind == "mnist":
        return ds.x_test, ds.y_test
    if kind == "translated":
        return pad_to_canvas(ds.x_test, 40, max_shift=6, seed=2), ds.y_test
    if kind == "affine":
        aff = affine_mnist(ds.x_test, ds.y_test, seed=1)
        return aff.images, aff.labels
    if kind == "multimnist":
        mm = multi_mnist(ds.x_test, ds.y_test, len(ds.x_test), seed=7)
        return mm.images, mm.labels
    raise ValueError(kind)


def _classes(model, images, batch_size=256):
    if isinstance(model, CapsNet):
        return evaluate.predict_lengths(model, images, batch_size).argmax(-1)
    return np.concatenate([keras.ops.convert_to_numpy(model(images[i:i + batch_size], training=False)).argmax(-1)
                           for i in range(0, len(images), batch_size)])


def evaluate_model(name, model):
    """The held-out scores of ``name``'s model (what CI checks against the record), as fractions."""
    _check_name(name)
    if name == "mnist":
        x, y = _heldout("mnist")
        return {"heldout_accuracy": float(np.mean(_classes(model, x) == y))}
    if name.startswith("affine"):
        return {f"{kind}_accuracy": float(np.mean(_classes(model, _heldout(kind)[0]) == _heldout(kind)[1]))
                for kind in ("translated", "affine")}
    x, pairs = _heldout("multimnist")
    return {"both_digits_accuracy": two_digit_accuracy(evaluate.predict_lengths(model, x), pairs)}


def verify(name, directory=None, tolerance=0.002):
    """Load ``name``, re-measure its held-out scores and compare them with its record. Returns
    ``{metric: (recorded, measured)}``; raises :class:`ReferenceModelError` on a difference above
    ``tolerance`` (0.2 points)."""
    model, record = load(name, directory)
    measured = evaluate_model(name, model)
    out = {}
    for metric, value in measured.items():
        recorded = record["evaluation"][metric]
        out[metric] = (recorded, value)
        if abs(recorded - value) > tolerance:
            raise ReferenceModelError(f"{name}: {metric} measured {100 * value:.2f}%, the record says "
                                      f"{100 * recorded:.2f}% (tolerance {100 * tolerance:.1f} points)")
    return out


# --------------------------------------------------------------------------- training


def _epoch_fit(name, model, ds, epoch, pairs=None):
    """Train ``model`` one epoch on ``name``'s training data for ``epoch`` (seeded by it)."""
    keras.utils.set_random_seed(SEED * 1000 + epoch)           # shuffling and dropout depend on (seed, epoch)
    if name == "mnist":
        batches = ShiftedBatches(ds.x_train, capsdata.one_hot(ds.y_train), BATCH_SIZE, 2, SEED, epoch)
        return model.fit(batches, epochs=1, shuffle=False, verbose=0)
    if name.startswith("affine"):
        x = pad_to_canvas(ds.x_train, 40, max_shift=6, seed=100 + epoch)   # same canvases for both models
        return model.fit(x, capsdata.one_hot(ds.y_train), batch_size=BATCH_SIZE, epochs=1, verbose=0)
    mm = multi_mnist(ds.x_train, ds.y_train, pairs or SPECS[name]["pairs_per_epoch"], seed=200 + epoch)
    return model.fit(mm.images, (np.eye(10, dtype="float32")[mm.labels], mm.digits), batch_size=BATCH_SIZE,
                     epochs=1, verbose=0)


def train_decoder(model, ds, epochs, copies=4, seed=0, verbose=1):
    """Stage 2 of the ``mnist`` reference model: the decoder alone, the capsules frozen.

    On two CPU cores the whole CapsNet gets ~1,400 steps of batch 128 (the paper's schedule on 60,000
    digits takes ~14,000 per 30 epochs); the decoder, a 1.4M-parameter MLP, is still drawing
    near-templates by then. Its inputs are cheap once the capsules are computed, so this encodes
    ``copies`` shifted copies of the training digits once (±2 px, as in training), masks each by its
    label (as the reconstruction loss does), and trains only the decoder on the paper's
    reconstruction loss, 0.0005 × the sum of squared pixel errors, with Adam 1e-3. Conv1,
    PrimaryCaps and DigitCaps are not touched: the classifications and capsules stay what the
    joint training made. Returns one entry per epoch with the held-out reconstruction error (the
    decoder fed the longest capsule, :func:`capslib.evaluate.reconstruction_error`)."""
    def encode(x):                                             # the frozen capsules, (n, 10, 16)
        return np.concatenate([keras.ops.convert_to_numpy(model.encode(x[i:i + 256])) for i in range(0, len(x), 256)])

    v_test = encode(ds.x_test)                                 # encoded once: only the decoder changes
    test_inputs = keras.ops.convert_to_numpy(model.mask(v_test))               # the longest capsule, (n, 160)
    inputs, targets = [], []
    for k in range(copies):
        x = ds.x_train if k == 0 else keras.ops.convert_to_numpy(
            capsdata.random_shift(ds.x_train, 2, seed=seed * 100 + k))
        masked = keras.ops.convert_to_numpy(model.mask(encode(x), capsdata.one_hot(ds.y_train)))   # (n, 160)
        inputs.append(masked)
        targets.append(x)
    inputs, targets = np.concatenate(inputs), np.concatenate(targets)              # (copies·n, 160), (…, 28, 28, 1)
    decoder = keras.Sequential([keras.Input(inputs.shape[1:]), model.decoder])     # shares the model's weights
    decoder.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=lambda y, p: 0.0005 * keras.ops.sum(keras.ops.square(y - p), axis=(1, 2, 3)))
    entries = []
    for epoch in range(epochs):
        keras.utils.set_random_seed(seed * 1000 + 500 + epoch)
        t0 = time.perf_counter()
        loss = decoder.fit(inputs, targets, batch_size=BATCH_SIZE, epochs=1, shuffle=True, verbose=0).history["loss"][-1]
        drawn = decoder.predict(test_inputs, batch_size=256, verbose=0)           # (n, 28, 28, 1)
        entries.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 1), "loss": float(loss),
                        "reconstruction_mse": float(np.mean((ds.x_test - drawn) ** 2))})
        if verbose:
            print(f"decoder epoch {epoch + 1}: loss {loss:.4f}, held-out reconstruction MSE "
                  f"{entries[-1]['reconstruction_mse']:.4f} ({entries[-1]['seconds']:.0f} s)", flush=True)
    return entries


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _environment():
    from .runmode import device_description
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(_git("status", "--porcelain")),
            "python": platform.python_version(), "keras": keras.__version__, "backend": keras.backend.backend(),
            "numpy": np.__version__, "device": device_description(), "machine": platform.platform()}


def _write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def train(name, out=None, fresh=False, verbose=1, smoke=None):
    """Train (or resume training) ``name`` in ``out`` (default ``runs/reference/<name>``): a
    checkpoint and ``history.json`` after every epoch, so an interrupted run continues where it
    stopped. Returns the history record. ``smoke=(n_images, max_epochs)`` trains on the first
    n_images digits (or pairs) for at most max_epochs: for tests of this machinery only."""
    _check_name(name)
    spec = dict(SPECS[name])
    out = Path(out or Path("runs") / "reference" / name)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, hist_path = out / "checkpoint.keras", out / "history.json"
    ds = capsdata.load_mnist()
    pairs = None
    if smoke:
        ds = capsdata.subset(ds, smoke[0], len(ds.x_test))
        spec["max_epochs"], pairs = smoke[1], smoke[0]
    if ckpt.exists() and hist_path.exists() and not fresh:
        history = json.loads(hist_path.read_text())
        model = keras.saving.load_model(ckpt)
        steps = int(model.optimizer.iterations)
        history["max_epochs"] = spec["max_epochs"]   # a resumed run obeys today's spec
        if verbose:
            print(f"{name}: resuming after epoch {len(history['epochs'])} ({steps:,} steps) from {ckpt}", flush=True)
    else:
        keras.utils.set_random_seed(SEED)
        arch = _arch(name)
        model = _compile(_build(arch))
        history = {"name": name, "description": spec["description"], "architecture": arch,
                   "parameters": int(model.count_params()), "data": f"{spec['data']}; {ds.description}",
                   "batch_size": BATCH_SIZE, "seed": SEED, "optimizer": "Adam 1e-3, x0.96 every 2,000 steps",
                   "metric": spec["metric"], "max_epochs": spec["max_epochs"], "patience": spec["patience"],
                   "command": (f"{REBUILD}  (python -m capslib.pretrained train {name})" if not smoke else
                               f"capslib.pretrained.train({name!r}, smoke={tuple(smoke)}): a smoke test"),
                   "environment": _environment(), "epochs": [], "stopped": None}
    while history["stopped"] is None:
        epoch = len(history["epochs"])
        t0 = time.perf_counter()
        logs = _epoch_fit(name, model, ds, epoch, pairs).history
        entry = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 1),
                 **{k: float(v[-1]) for k, v in logs.items()}, **evaluate_model(name, model)}
        if not all(np.isfinite(v) for v in entry.values() if isinstance(v, float)):
            raise FloatingPointError(f"{name}: NaN/inf in epoch {epoch + 1}: {entry}")
        history["epochs"].append(entry)
        scores = [e[spec["metric"]] for e in history["epochs"]]
        best = int(np.argmax(scores))
        if len(scores) - 1 - best >= spec["patience"]:
            history["stopped"] = (f"held-out {spec['metric']} did not improve for {spec['patience']} epochs "
                                  f"(best {100 * scores[best]:.2f}% at epoch {best + 1})")
        elif len(scores) >= spec["max_epochs"]:
            history["stopped"] = f"reached max_epochs = {spec['max_epochs']}"
        _save_run(model, history, out)
        if verbose:
            print(f"{name} epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in entry.items() if k not in ("epoch", "seconds"))
                + f" ({entry['seconds']:.0f} s)" + (f" — stopped: {history['stopped']}" if history["stopped"] else ""),
                flush=True)
    stage = spec.get("decoder_stage")
    if stage and "decoder_stage" not in history:
        stage = {"epochs": 1, "copies": 1} if smoke else stage
        if verbose:
            print(f"{name}: stage 2, the decoder alone for {stage['epochs']} epochs "
                  f"({stage['copies']} copies of the training digits)", flush=True)
        before = evaluate.reconstruction_error(model, ds.x_test)              # what the joint training drew
        entries = train_decoder(model, ds, stage["epochs"], stage["copies"], SEED, verbose)
        history["decoder_stage"] = {
            "what": "the decoder alone, conv1/PrimaryCaps/DigitCaps frozen (capslib.pretrained.train_decoder)",
            "data": f"{stage['copies']} copies of the training digits (the first unshifted, the others ±2 px), "
                    "each capsule masked by its label",
            "loss": "0.0005 × sum of squared pixel errors, Adam 1e-3, batch 128",
            "reconstruction_mse_before": before, "environment": _environment(),
            **stage, "history": entries}
        _save_run(model, history, out)
    return history


def _save_run(model, history, out):
    """Checkpoint and history together, each replaced atomically: an interrupted run resumes."""
    model.save(out / "checkpoint.tmp.keras")
    os.replace(out / "checkpoint.tmp.keras", out / "checkpoint.keras")
    _write_json(out / "history.json", history)


# --------------------------------------------------------------------------- exporting


def export(name, run=None, directory=None):
    """Write ``run``'s last checkpoint as ``<name>.npz`` (float16, no pickle) and ``<name>.json``
    (the training history, the file's SHA-256, and the held-out scores of the float16 weights)."""
    _check_name(name)
    run = Path(run or Path("runs") / "reference" / name)
    folder = Path(directory) if directory else reference_dir()
    folder.mkdir(parents=True, exist_ok=True)
    history = json.loads((run / "history.json").read_text())
    if history["stopped"] is None:
        raise ReferenceModelError(f"{run}: training has not finished (epoch {len(history['epochs'])}); "
                                  f"run `python -m capslib.pretrained train {name}` first")
    model = keras.saving.load_model(run / "checkpoint.keras")
    arrays = {}
    for k, v in _keys(model).items():
        a = keras.ops.convert_to_numpy(v)
        if np.abs(a).max() >= np.finfo(np.float16).max:
            raise ReferenceModelError(f"{name}: {k} does not fit in float16 (max |w| {np.abs(a).max():g})")
        arrays[k] = a.astype(np.float16)
    npz_path = folder / f"{name}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    npz_path.write_bytes(buf.getvalue())
    record = {key: history[key] for key in ("name", "description", "architecture", "parameters")}
    record["weights"] = {"file": npz_path.name, "dtype": "float16", "bytes": npz_path.stat().st_size,
                         "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    record["training"] = {key: history[key] for key in ("command", "data", "batch_size", "seed", "optimizer",
                                                        "metric", "max_epochs", "patience", "stopped",
                                                        "environment")}
    if "decoder_stage" in history:
        record["training"]["decoder_stage"] = history["decoder_stage"]
    record["training"]["epochs_run"] = len(history["epochs"])
    record["training"]["history"] = history["epochs"]
    record["evaluation"] = {}
    (folder / f"{name}.json").write_text(json.dumps(record))   # provisional, so load() can read the weights
    shipped, _ = load(name, folder)
    record["evaluation"] = {**evaluate_model(name, shipped), "weights": "the shipped float16 weights",
                            "data": _EVAL_DATA[name], "date": _environment()["date"]}
    if name == "mnist":                                        # what the book's figures show, as numbers
        record["evaluation"]["capsules"] = evaluate.summary(shipped, *_heldout("mnist"))
    _write_json(folder / f"{name}.json", record)
    return record


_EVAL_DATA = {
    "mnist": "the 2,004 held-out offline MNIST digits (capslib.data)",
    "affine_capsnet": "translated: the 2,004 held-out digits placed at random on 40×40 (pad_to_canvas, max_shift 6, "
                      "seed 2); affine: the same digits under random affine transforms (affine_mnist, seed 1)",
    "multimnist": "2,004 MultiMNIST pairs of the held-out digits (multi_mnist, seed 7); both digits right = "
                  "the two longest capsules are the two classes",
}
_EVAL_DATA["affine_cnn"] = _EVAL_DATA["affine_capsnet"]


# --------------------------------------------------------------------------- command line


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m capslib.pretrained", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    for action, text in (("train", "train (or resume) in runs/reference/<name>"),
                         ("export", "write capslib/reference/<name>.npz and .json from a finished run"),
                         ("verify", "load, re-measure the held-out scores and compare with the record")):
        s = sub.add_parser(action, help=text)
        s.add_argument("names", nargs="+", help=f"'all' or some of: {', '.join(NAMES)}")
        if action == "train":
            s.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    sub.add_parser("list", help="what is shipped, with its record's scores")
    args = p.parse_args(argv)
    if args.action == "list":                                  # a Markdown table (the README's)
        print("| name | parameters | epochs | held-out scores of the shipped weights | file |\n|---|---|---|---|---|")
        for name in NAMES:
            path = reference_dir() / f"{name}.json"
            if path.exists():
                rec = json.loads(path.read_text())
                scores = ", ".join(f"{k.replace('_', ' ')} {100 * v:.2f}%" for k, v in rec["evaluation"].items()
                                   if isinstance(v, float))
                stage = rec["training"].get("decoder_stage")
                epochs = f"{rec['training']['epochs_run']}" + (f" + {stage['epochs']} decoder-only" if stage else "")
                print(f"| `{name}` | {rec['parameters']:,} | {epochs} | {scores} | "
                      f"{rec['weights']['bytes'] / 2**20:.1f} MiB |")
            else:
                print(f"| `{name}` | not exported (run `{REBUILD}`) | | | |")
        return 0
    names = list(NAMES) if args.names == ["all"] else args.names
    for name in names:
        _check_name(name)
    for name in names:
        if args.action == "train":
            train(name, fresh=args.fresh)
        elif args.action == "export":
            rec = export(name)
            print(f"{name}: {rec['weights']['bytes'] / 2**20:.1f} MiB, " + ", ".join(
                f"{k} {100 * v:.2f}%" for k, v in rec["evaluation"].items() if isinstance(v, float)))
        else:
            for metric, (recorded, measured) in verify(name).items():
                print(f"{name}: {metric} recorded {100 * recorded:.2f}%, measured {100 * measured:.2f}% ✓")
    return 0


if __name__ == "__main__":
    sys.exit(main())
