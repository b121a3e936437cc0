#!/usr/bin/env python
"""Which initialisation and loss balance should capslib's CapsNet default to? Measured.

Each variant trains the paper's CapsNet (28×28, 3 routing iterations, batch 128, Adam 1e-3 ×0.96
every 2,000 steps, ±2 px shifts) for a few epochs on the 7,996 offline MNIST training digits,
from the same seed, in its own process, and reports: the state at initialisation (capsule
lengths, primary capsule and prediction lengths, margin loss, coupling spread), the loss over
the first steps, held-out accuracy per epoch, and at the end the reconstruction error, the
Fig. 4 effect and the coupling spread (``capslib.evaluate``) on the 2,004 held-out digits.

Variants:

  keras             capslib's former default: Keras' glorot/zero initialisers, W ~ TN(0.01), no
                    DigitCaps bias, a plain primary conv (``CapsNet(init="keras", use_bias=False)``)
  official          capslib's default (``CapsNet()``): every layer drawn as the official code's
                    variables.weight_variable and bias_variable (conv1 TN(0.05), primary TN(0.1),
                    W TN(0.1), decoder TN(0.1), all biases 0.1, the (10, 16) DigitCaps bias), and
                    the primary pre-activation conv/32 + bias, as the official conv_slim_capsule's
                    one routing pass over 32 types with zero logits computes it
  official_no_scale ``official`` without the 1/32 (the primary conv's output used as it is)
  official_balance  ``official`` with ``loss_balance="official"`` (margin term / 20)

Run 1 (bench/results/init_comparison.json, at 595e6aa, before the 1/32 was in capslib) named
the variants differently: its ``official`` is today's ``official_no_scale`` and its
``official_exact`` (a patched PrimaryCaps) is today's ``official``; its ``official_balance`` was
``official_no_scale`` with the official balance.

    python bench/init_comparison.py                       # all variants, 3 epochs each (~30–60 min, 2 cores)
    python bench/init_comparison.py --variants keras,official --epochs 1
    python bench/init_comparison.py --quick               # smoke test: 512 images, 1 epoch
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

RESULT_TAG = "INIT_RESULT "
VARIANTS = ("keras", "official", "official_no_scale", "official_balance")


def build(variant):
    import capslib

    kwargs = {"keras": dict(init="keras", use_bias=False), "official": {}, "official_no_scale": {},
              "official_balance": dict(loss_balance="official")}[variant]
    model = capslib.CapsNet(**kwargs)
    if variant == "official_no_scale":
        model.primary_caps.conv_scale = 1.0         # read when call() is traced: a plain conv + bias
    return model


def worker(variant, epochs, n_train, seed):
    import keras
    import numpy as np

    import capslib
    from capslib import data, evaluate, train

    keras.utils.set_random_seed(seed)
    ds = data.load_mnist()
    x_train, y_train = ds.x_train[:n_train], ds.y_train[:n_train]
    model = build(variant)
    model.compile(optimizer=train.make_optimizer(train.TrainConfig()), loss=capslib.margin_loss,
                  metrics=["categorical_accuracy"], jit_compile=False)
    probe = ds.x_test[:256]
    v = keras.ops.convert_to_numpy(model.encode(probe))
    u = model.primary_caps(model.conv1(probe))
    u_hat = keras.ops.convert_to_numpy(model.digit_caps.predictions(u))
    lengths = np.linalg.norm(v, axis=-1)
    init = {"lengths_mean": float(lengths.mean()), "lengths_max": float(lengths.max()),
            "primary_length_mean": float(np.linalg.norm(keras.ops.convert_to_numpy(u), axis=-1).mean()),
            "u_hat_length_mean": float(np.linalg.norm(u_hat, axis=-1).mean()),
            "margin_loss": float(capslib.margin_loss(data.one_hot(ds.y_test[:256]), lengths)),
            "couplings": evaluate.coupling_spread(model, probe[:64])}

    step_losses = []

    class StepLoss(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if len(step_losses) < 40:
                step_losses.append(float(logs["loss"]))

    batches = train.ShiftedBatches(x_train, data.one_hot(y_train), 128, max_shift=2, seed=seed)
    epochs_log = []
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        t0 = time.perf_counter()
        hist = model.fit(batches, epochs=1, shuffle=False, verbose=0, callbacks=[StepLoss()])
        seconds = time.perf_counter() - t0
        epochs_log.append({"epoch": epoch + 1, "loss": float(hist.history["loss"][-1]),
                           "train_accuracy": float(hist.history["categorical_accuracy"][-1]),
                           "heldout_accuracy": evaluate.accuracy(model, ds.x_test, ds.y_test),
                           "seconds": round(seconds, 1)})
        print(f"  {variant} epoch {epoch + 1}: loss {epochs_log[-1]['loss']:.4f}, held-out "
              f"{100 * epochs_log[-1]['heldout_accuracy']:.2f}% ({seconds:.0f} s)", file=sys.stderr, flush=True)
    final = evaluate.summary(model, ds.x_test, ds.y_test)
    print(RESULT_TAG + json.dumps({"variant": variant, "params": model.count_params(), "init": init,
                                   "first_step_losses": step_losses, "epochs": epochs_log, "final": final}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=None, help="first N training digits (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 512 training digits, 1 epoch")
    p.add_argument("--json", help="write all results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    n_train = 512 if args.quick else (args.train_size or 10**9)
    epochs = 1 if args.quick else args.epochs
    if args.worker:
        worker(args.worker, epochs, n_train, args.seed)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    for variant in variants:
        cmd = [sys.executable, __file__, "--worker", variant, "--epochs", str(epochs), "--seed", str(args.seed)]
        cmd += ["--quick"] if args.quick else (["--train-size", str(args.train_size)] if args.train_size else [])
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        results.append(json.loads(next(l for l in out.splitlines() if l.startswith(RESULT_TAG))[len(RESULT_TAG):]))
    import keras
    record = {"command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
              "started": started, "machine": f"{platform.platform()}, {os.cpu_count()} cores",
              "keras": keras.__version__, "backend": keras.backend.backend(), "epochs": epochs,
              "train_size": None if n_train >= 10**9 else n_train, "results": results}
    print(f"\n{started}; {record['machine']}; Keras {record['keras']} ({record['backend']}); "
          f"{epochs} epoch(s), batch 128, seed {args.seed}\n")
    head = f"{'variant':<17} {'init |v|':>9} {'init |u|':>9} {'init loss':>9}  " + \
           " ".join(f"{'ep' + str(e + 1):>7}" for e in range(epochs)) + f" {'recon mse':>9} {'fig4 max':>8} {'c max':>6}"
    print(head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r['variant']:<17} {r['init']['lengths_mean']:9.2e} {r['init']['primary_length_mean']:9.3f} "
              f"{r['init']['margin_loss']:9.3f}  " + " ".join(f"{100 * e['heldout_accuracy']:6.2f}%" for e in r["epochs"])
              + f" {r['final']['reconstruction_mse']:9.4f} {r['final']['fig4_effect_max']:8.4f} "
              f"{r['final']['couplings']['max']:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
