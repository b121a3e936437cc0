"""Train CapsNet from the command line: ``python -m capslib.train --help``.

    python -m capslib.train --dataset mnist --epochs 30 --out runs/mnist
    python -m capslib.train --quick --out runs/quick          # a couple of minutes on a CPU
    python -m capslib.train --resume --out runs/mnist         # continue an interrupted run

What it does, as in the paper and its official code: Adam at 1e-3 with exponential decay
(×0.96 every 2,000 steps), batch 128, margin loss + 0.0005 × reconstruction loss, and the
paper's only augmentation: every training image shifted by up to 2 px with zero padding.

Files in ``--out``: ``checkpoint.keras`` (model + optimizer state, written each epoch, what
``--resume`` reads), ``model.keras`` (the final model), ``history.json`` (per-epoch metrics and
how the run was made), ``training_curve.png`` and ``tensorboard/`` logs.

For the TensorFlow backend, :func:`make_tf_train_step` is the same training step written as a
``tf.GradientTape`` loop, for readers who want to see every line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np

from . import data as capsdata
from .losses import margin_loss, reconstruction_loss
from .model import CapsNet
from .ops import capsule_length
from .runmode import device_description, quick

__all__ = ["TrainConfig", "make_optimizer", "build_model", "ShiftedBatches", "train", "load_or_train",
           "quick_config", "book_config", "book_run_dir", "book_trained_model", "make_tf_train_step", "main"]

# Quick mode: a subset that trains in about two minutes on 2 CPU cores.
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 4000, 1000, 1


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in history.json so a resumed run can check it."""

    dataset: str = "mnist"
    epochs: int = 30
    batch_size: int = 128
    routing_iterations: int = 3
    learning_rate: float = 1e-3
    decay_steps: int = 2000
    decay_rate: float = 0.96
    max_shift: int = 2
    train_size: int | None = None     # first N training images (None: all)
    test_size: int | None = None
    use_bias: bool = True             # the official code's (10, 16) DigitCaps bias
    init: str = "official"            # "official" or "keras" (capslib.layers.layer_initializers)
    loss_balance: str = "paper"       # "paper" or "official" (capslib.losses.LOSS_BALANCES)
    seed: int = 0
    tensorboard: bool = True
    mixed_precision: str = "off"      # "off", "float16" or "bfloat16"
    jit_compile: str = "auto"         # "auto" (XLA on GPU/JAX, off on a TF CPU), "on", "off"
    multi_gpu: bool = False


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam whose learning rate decays ×decay_rate every decay_steps steps (smoothly, as
    ``tf.train.exponential_decay`` did in the official code)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, decay_steps=cfg.decay_steps, decay_rate=cfg.decay_rate)
    return keras.optimizers.Adam(learning_rate=schedule)


class ShiftedBatches(keras.utils.PyDataset):
    """Shuffled batches of (shifted images, one-hot labels), reproducible from (seed, epoch).

    images ``(N, 28, 28, 1)`` float32, labels_onehot ``(N, 10)``. Each epoch's order and shifts
    depend only on the seed and the epoch number, so a resumed run sees exactly the batches an
    uninterrupted one would have.
    """

    def __init__(self, images, labels_onehot, batch_size, max_shift=2, seed=0, epoch=0):
        super().__init__()
        self.images, self.labels = images, labels_onehot
        self.batch_size, self.max_shift, self.seed = batch_size, max_shift, seed
        self.set_epoch(epoch)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.images[idx]
        if self.max_shift:
            seed = int(np.random.default_rng([self.seed, self.epoch, index]).integers(2**31))
            x = keras.ops.convert_to_numpy(capsdata.random_shift(x, self.max_shift, seed=seed))
        return x, self.labels[idx]


class _HistoryFile(keras.callbacks.Callback):
    """Append each epoch's metrics to history.json and save checkpoint.keras: an interrupted
    run loses at most the epoch in progress."""

    def __init__(self, out, record, batches, n_images):
        super().__init__()
        self.out, self.record, self.batches, self.n_images = out, record, batches, n_images

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)      # keeps the data order tied to the true epoch on resume
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.t0
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                 "seconds": round(seconds, 2), "images_per_second": round(self.n_images / seconds, 1)}
        if any(isinstance(v, float) and not math.isfinite(v) for v in entry.values()):
            entry["nan"] = True
        self.record["epochs"].append(entry)
        # History first, then the checkpoint, each replaced atomically: a crash in between leaves
        # the history one epoch ahead, which --resume trims to the checkpoint's step count. NaN
        # weights are never saved over the last good checkpoint.
        _write_json(os.path.join(self.out, "history.json"), self.record)
        if not entry.get("nan"):
            tmp = os.path.join(self.out, "checkpoint.tmp.keras")
            self.model.save(tmp)
            os.replace(tmp, os.path.join(self.out, "checkpoint.keras"))


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)     # never leave a half-written history behind


def _environment():
    """Where the run happened, for the history file and the book's notes."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "keras": keras.__version__,
            "backend": keras.backend.backend(), "device": device_description(),
            "machine": platform.platform(), "command": " ".join(sys.argv)}


def train(cfg: TrainConfig, out: str, resume: bool = False, verbose: int = 1):
    """Train (or continue training) a CapsNet; returns ``(model, record)``.

    record is the content of history.json: ``{"config", "data", "environment", "epochs": [...]}``.
    """
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)

    ds = capsdata.load(cfg.dataset)
    if cfg.train_size or cfg.test_size:
        # Sizes larger than the data mean "all of it" (the offline subset has 7,996 / 2,004).
        ds = capsdata.subset(ds, min(cfg.train_size or len(ds.x_train), len(ds.x_train)),
                             min(cfg.test_size or len(ds.x_test), len(ds.x_test)))
    y_train, y_test = capsdata.one_hot(ds.y_train), capsdata.one_hot(ds.y_test)

    with _precision(cfg.mixed_precision), _distribution(cfg.multi_gpu):
        batches = ShiftedBatches(ds.x_train, y_train, cfg.batch_size, cfg.max_shift, cfg.seed)
        model, record = _new_or_resumed(cfg, ds, out, resume, verbose, len(batches))
        initial_epoch = len(record["epochs"])
        batches.set_epoch(initial_epoch)
        callbacks = [_HistoryFile(out, record, batches, len(ds.x_train)), keras.callbacks.TerminateOnNaN()]
        if cfg.tensorboard and _has_tensorboard():
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")))
        if initial_epoch < cfg.epochs:
            # shuffle=False: ShiftedBatches shuffles itself from (seed, epoch); Keras' own batch
            # shuffling draws from the global RNG, which a resumed run can't reproduce.
            model.fit(batches, validation_data=(ds.x_test, y_test), epochs=cfg.epochs, shuffle=False,
                      initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
    if any(e.get("nan") for e in record["epochs"]):
        raise FloatingPointError(f"training produced NaN/inf (see {out}/history.json); lower the "
                                 "learning rate or check the inputs with capslib.data.scale_images")
    model.save(os.path.join(out, "model.keras"))
    import matplotlib.pyplot as plt

    from .viz import plot_history
    fig = plot_history(record)
    fig.savefig(os.path.join(out, "training_curve.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)       # saved, not shown: a notebook that trains shows only what it plots itself
    return model, record


def build_model(cfg: TrainConfig, input_shape=(28, 28, 1)) -> CapsNet:
    """A CapsNet compiled as every run compiles it: Adam with the decay, the margin loss (plus
    the reconstruction loss in ``CapsNet.compute_loss``), categorical accuracy, ``cfg``'s XLA."""
    model = CapsNet(input_shape=input_shape, routing_iterations=cfg.routing_iterations, use_bias=cfg.use_bias,
                    init=cfg.init, loss_balance=cfg.loss_balance)
    model.compile(optimizer=make_optimizer(cfg), loss=margin_loss, metrics=["categorical_accuracy"],
                  jit_compile={"auto": "auto", "on": True, "off": False}[cfg.jit_compile])
    return model


# Settings a resumed run may change: how long to train and whether to log to TensorBoard.
_RESUMABLE_CHANGES = ("epochs", "tensorboard")


def _new_or_resumed(cfg, ds, out, resume, verbose, steps_per_epoch):
    """A compiled model and its history record: fresh, or read back from checkpoint.keras."""
    ckpt, hist_path = os.path.join(out, "checkpoint.keras"), os.path.join(out, "history.json")
    if resume and os.path.exists(ckpt):
        with open(hist_path) as f:
            record = json.load(f)
        saved, asked = ({k: v for k, v in c.items() if k not in _RESUMABLE_CHANGES}
                        for c in (record["config"], _jsonable(cfg)))
        if saved != asked:
            changed = {k: (saved.get(k), asked.get(k)) for k in asked if saved.get(k) != asked.get(k)}
            raise SystemExit(f"--resume: {out} holds a run with other settings (saved, asked): {changed}. "
                             f"Only {', '.join(_RESUMABLE_CHANGES)} may change when resuming.")
        model = keras.saving.load_model(ckpt)                # weights + optimizer state (step count, lr)
        done = int(model.optimizer.iterations) // steps_per_epoch
        record["epochs"] = record["epochs"][:done]           # drop an epoch whose checkpoint never landed
        record["config"] = _jsonable(cfg)
        if verbose:
            print(f"Resuming {out} after epoch {done} of {cfg.epochs}.")
        return model, record
    if resume:
        print(f"--resume: nothing to resume in {out} (no checkpoint.keras); starting a new run.")
    if os.path.exists(ckpt):
        raise SystemExit(f"{out} already holds a run (checkpoint.keras). "
                         "Pass --resume to continue it, or choose another --out.")
    model = build_model(cfg, ds.x_train.shape[1:])
    return model, {"config": _jsonable(cfg), "data": ds.description, "environment": _environment(), "epochs": []}


@contextlib.contextmanager
def _precision(mode):
    """Build the model under a mixed policy: float16/bfloat16 convolutions and matmuls, float32
    variables. squash, the lengths and the losses compute in float32 whatever the policy (see
    capslib.ops and capslib.layers.Length), so nothing overflows or underflows there; with
    float16, Keras wraps the optimizer in a LossScaleOptimizer."""
    if mode == "off":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{mode}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def _distribution(multi_gpu):
    """Data parallelism over every local GPU: each replica gets batch_size / n_gpus images and
    the gradients are averaged. TensorFlow: MirroredStrategy; JAX: keras.distribution.DataParallel."""
    if not multi_gpu:
        yield
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        strategy = tf.distribute.MirroredStrategy()
        print(f"--multi-gpu: MirroredStrategy over {strategy.num_replicas_in_sync} device(s)")
        with strategy.scope():
            yield
    elif backend == "jax":
        devices = keras.distribution.list_devices()
        print(f"--multi-gpu: DataParallel over {len(devices)} device(s)")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
    else:
        raise SystemExit(f"--multi-gpu supports the tensorflow and jax backends, not {backend!r}")


def load_or_train(cfg: TrainConfig, out: str, verbose: int = 0):
    """The book's way to get a trained model: reuse ``out/model.keras`` if it was trained with
    exactly ``cfg``, otherwise train it now. Returns ``(model, record)``."""
    model_path, hist_path = os.path.join(out, "model.keras"), os.path.join(out, "history.json")
    if os.path.exists(model_path) and os.path.exists(hist_path):
        with open(hist_path) as f:
            record = json.load(f)
        if record["config"] == _jsonable(cfg) and len(record["epochs"]) == cfg.epochs:
            return keras.saving.load_model(model_path), record
    if os.path.exists(out):
        for name in ("checkpoint.keras", "model.keras", "history.json"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    return train(cfg, out, verbose=verbose)


def quick_config() -> TrainConfig:
    """The live demonstration runs of quick mode: 4,000 training images, 1 epoch, batch 32 (a
    few minutes on 2 CPU cores), tested on 1,000 held-out images."""
    return TrainConfig(epochs=QUICK_EPOCHS, batch_size=32, train_size=QUICK_TRAIN, test_size=QUICK_TEST,
                       tensorboard=False)


def book_config() -> TrainConfig:
    """What the book trains itself: :func:`quick_config` in quick mode; in full mode (a GPU) the
    paper's CapsNet on all the data, 10 epochs, batch 128."""
    if quick():
        return quick_config()
    return TrainConfig(epochs=10, batch_size=128, tensorboard=False)


def book_run_dir() -> str:
    """Where the book keeps the models it trains: ``$CAPSBOOK_MODELS``, else ``_build/models``
    beside ``_toc.yml`` when run inside the book, else ``./capsbook-models``."""
    root = os.environ.get("CAPSBOOK_MODELS")
    if not root:
        here = os.getcwd()
        book_root = next((d for d in (here, os.path.dirname(here)) if os.path.exists(os.path.join(d, "_toc.yml"))), None)
        root = os.path.join(book_root, "_build", "models") if book_root else os.path.join(here, "capsbook-models")
    return root


def book_trained_model(verbose=0):
    """``(model, history)`` trained by this build with :func:`book_config` (once per build or
    Colab session, then reused): the live demonstrations of the training chapter. The chapters
    that look at a trained model use :func:`capslib.pretrained.book_model` instead."""
    return load_or_train(book_config(), os.path.join(book_run_dir(), "quick" if quick() else "full"), verbose=verbose)


def make_tf_train_step(model, optimizer, reconstruction_weight=0.0005):
    """The training step as an explicit ``tf.GradientTape`` loop (TensorFlow backend only).

    Returns ``step(images, labels_onehot) -> dict(loss, margin, reconstruction, accuracy)``,
    compiled once with ``tf.function``. Same maths as ``fit``: margin loss on the lengths (× the
    model's ``margin_scale``), plus the reconstruction loss of the decoder fed the true class's capsule.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"make_tf_train_step needs the TensorFlow backend, not {keras.backend.backend()!r}; "
                           "use model.fit, which works on every backend")
    import tensorflow as tf

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            v = model.encode(images)                              # (batch, 10, 16)
            lengths = capsule_length(v)                           # (batch, 10)
            recon = model.decode(v, labels)                       # (batch, 28, 28, 1), true class
            margin = margin_loss(labels, lengths) * model.margin_scale   # 1, or 1/20 ("official")
            rec = reconstruction_loss(images, recon, reconstruction_weight)
            loss = margin + rec
            scaled = optimizer.scale_loss(loss)                   # loss scaling under float16; else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        accuracy = tf.reduce_mean(tf.cast(tf.argmax(lengths, -1) == tf.argmax(labels, -1), tf.float32))
        return {"loss": loss, "margin": margin, "reconstruction": rec, "accuracy": accuracy}

    return step


def _jsonable(cfg: TrainConfig):
    return json.loads(json.dumps(asdict(cfg)))


def _has_tensorboard():
    try:  # Keras writes TensorBoard logs with tf.summary, which needs both packages
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401
        return True
    except ImportError:
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m capslib.train",
        description="Train CapsNet (Sabour et al. 2017) with the paper's settings. "
                    "Outputs go to --out: checkpoint.keras, model.keras, history.json, "
                    "training_curve.png, tensorboard/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig()
    p.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default=d.dataset,
                   help="mnist reads $CAPSLIB_MNIST (an offline .npz) if set, else keras' download")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="total epochs (a resumed run counts the done ones, and may raise this to train longer)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    p.add_argument("--routing-iterations", type=int, default=d.routing_iterations, help="routing iterations r")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam's initial learning rate")
    p.add_argument("--decay-steps", type=int, default=d.decay_steps, help="steps per ×decay-rate of the learning rate")
    p.add_argument("--decay-rate", type=float, default=d.decay_rate, help="learning-rate decay factor")
    p.add_argument("--max-shift", type=int, default=d.max_shift, help="random shift augmentation in pixels (0: off)")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-size", type=int, default=None, help="use only the first N test images")
    p.add_argument("--no-bias", action="store_true",
                   help="leave out the official code's (10, 16) DigitCaps bias (the paper's Eq. 2 exactly)")
    p.add_argument("--init", choices=["official", "keras"], default=d.init,
                   help="official: every layer drawn as the paper's official code does; keras: Keras' "
                        "defaults with W ~ TN(0.01) (capslib.layers.layer_initializers)")
    p.add_argument("--loss-balance", choices=["paper", "official"], default=d.loss_balance,
                   help="paper: Eq. 4 summed over classes + 0.0005 x reconstruction; official: the margin "
                        "term divided by 20, as the official code's mean over batch and classes")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, data order and shifts")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_TRAIN} train / {QUICK_TEST} test images, {QUICK_EPOCHS} epoch "
                        "(overrides --epochs/--train-size/--test-size)")
    p.add_argument("--out", default="runs/capsnet", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-tensorboard", action="store_true", help="don't write TensorBoard logs")
    p.add_argument("--mixed-precision", choices=["off", "float16", "bfloat16"], default=d.mixed_precision,
                   help="compute convolutions and matmuls in 16 bits (squash, lengths and losses stay float32); "
                        "float16 uses loss scaling. bfloat16 suits recent GPUs (A100, H100) and TPUs")
    p.add_argument("--jit-compile", choices=["auto", "on", "off"], default=d.jit_compile,
                   help="XLA compilation of the train step. auto: on for GPUs and JAX, off on a TensorFlow "
                        "CPU (where XLA is about 15x slower here)")
    p.add_argument("--multi-gpu", action="store_true",
                   help="train on all local GPUs (TensorFlow MirroredStrategy / JAX DataParallel); "
                        "--batch-size is the global batch")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="0 silent, 1 progress bar, 2 a line per epoch")
    return p.parse_args(argv)


def config_from_args(args) -> TrainConfig:
    cfg = TrainConfig(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      routing_iterations=args.routing_iterations, learning_rate=args.learning_rate,
                      decay_steps=args.decay_steps, decay_rate=args.decay_rate, max_shift=args.max_shift,
                      train_size=args.train_size, test_size=args.test_size, use_bias=not args.no_bias,
                      init=args.init, loss_balance=args.loss_balance,
                      seed=args.seed, tensorboard=not args.no_tensorboard,
                      mixed_precision=args.mixed_precision, jit_compile=args.jit_compile,
                      multi_gpu=args.multi_gpu)
    if args.quick:
        cfg.epochs, cfg.train_size, cfg.test_size = QUICK_EPOCHS, QUICK_TRAIN, QUICK_TEST
    for name in ("epochs", "batch_size", "routing_iterations", "decay_steps"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(cfg, name)}")
    if cfg.max_shift < 0:
        raise SystemExit(f"--max-shift must be ≥ 0, got {cfg.max_shift}")
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    _, record = train(cfg, args.out, resume=args.resume, verbose=args.verbose)
    last = record["epochs"][-1]
    print(f"done: {len(record['epochs'])} epochs; test accuracy {100 * last['val_categorical_accuracy']:.2f}% "
          f"on {record['data']}; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
