"""Training throughput of capslib's CapsNet: images/s at several batch sizes, and a 60k epoch.

    python bench/gpu_throughput.py                                  # batch 32, 64, 128, 256
    KERAS_BACKEND=jax python bench/gpu_throughput.py --mixed-precision bfloat16
    python bench/gpu_throughput.py --quick                          # CPU smoke test, < 1 min

Runs on whatever backend (KERAS_BACKEND) and device are active. For each batch size it builds a
fresh CapsNet, compiles it as ``capslib.train`` does (Adam with the paper's decay, margin loss,
categorical accuracy, the reconstruction loss through ``compute_loss``), runs one warm-up block
(compilation, excluded), then ``--repeats`` timed blocks of ``--steps`` training steps with
``model.fit`` on in-memory data, and reports the median block as images/s. A block's time is
measured around ``fit`` after it returns, i.e. after the device has finished the work.
``--epoch`` also times one real 60,000-image epoch (``fit`` over 60,000 images at the best batch
size; add ``--shift`` for the ±2 px augmentation in the data pipeline, as in training).

Images are random (throughput does not depend on pixel values) unless ``--data fashion_mnist``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from capslib import data as capsdata  # noqa: E402
from capslib.runmode import device_description  # noqa: E402
from capslib.train import ShiftedBatches, TrainConfig, _precision, build_model  # noqa: E402


def build(mixed_precision, jit_compile):
    with _precision(mixed_precision):
        return build_model(TrainConfig(jit_compile=jit_compile))


def images_and_labels(n, source, seed=0):
    if source == "random":
        rng = np.random.default_rng(seed)
        return rng.random((n, 28, 28, 1), dtype=np.float32), capsdata.one_hot(rng.integers(0, 10, n))
    ds = capsdata.load(source)
    reps = -(-n // len(ds.x_train))
    return (np.concatenate([ds.x_train] * reps)[:n], capsdata.one_hot(np.concatenate([ds.y_train] * reps)[:n]))


def time_blocks(model, x, y, batch_size, steps, repeats):
    """Seconds per block of `steps` training steps: one warm-up block, then `repeats` timed."""
    n = batch_size * steps
    model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-sizes", default="32,64,128,256", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per batch size (median reported)")
    p.add_argument("--mixed-precision", choices=["off", "float16", "bfloat16"], default="off")
    p.add_argument("--jit-compile", choices=["auto", "on", "off"], default="auto",
                   help="XLA; auto = on for GPU/JAX, off for TensorFlow on a CPU")
    p.add_argument("--data", choices=["random", "mnist", "fashion_mnist"], default="random")
    p.add_argument("--epoch", action="store_true", help="also time one 60,000-image epoch at the best batch size")
    p.add_argument("--epoch-images", type=int, default=60000, help="images in the --epoch run")
    p.add_argument("--shift", action="store_true", help="--epoch: apply the ±2 px shift in the data pipeline")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 8 and 16, 2 steps, 2 repeats")
    p.add_argument("--json", help="write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.steps, args.repeats, args.epoch_images = "8,16", 2, 2, 64

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    x, y = images_and_labels(max(batch_sizes) * args.steps, args.data)
    print(f"capslib CapsNet training throughput — {device_description()}, keras {keras.__version__}, "
          f"mixed precision {args.mixed_precision}, jit_compile {args.jit_compile}, data {args.data}")
    print(f"{'batch':>6} {'median ms/step':>15} {'images/s':>10} {'min..max images/s':>20}")
    rows = []
    for b in batch_sizes:
        model = build(args.mixed_precision, args.jit_compile)
        times = time_blocks(model, x, y, b, args.steps, args.repeats)
        ips = [b * args.steps / t for t in times]
        med = statistics.median(times)
        rows.append({"batch_size": b, "median_ms_per_step": 1000 * med / args.steps,
                     "images_per_second": b * args.steps / med, "min_ips": min(ips), "max_ips": max(ips)})
        r = rows[-1]
        print(f"{b:>6} {r['median_ms_per_step']:>15.1f} {r['images_per_second']:>10.0f} "
              f"{r['min_ips']:>9.0f}..{r['max_ips']:<9.0f}")
        del model
        keras.backend.clear_session()

    best = max(rows, key=lambda r: r["images_per_second"])
    result = {"rows": rows, "best_batch_size": best["batch_size"],
              "estimated_60k_epoch_seconds": 60000 / best["images_per_second"]}
    print(f"best: batch {best['batch_size']}, {best['images_per_second']:.0f} images/s → "
          f"a 60,000-image epoch ≈ {result['estimated_60k_epoch_seconds']:.1f} s (estimated from the median step)")

    if args.epoch:
        n, b = args.epoch_images, best["batch_size"]
        model = build(args.mixed_precision, args.jit_compile)
        ex, ey = images_and_labels(n, args.data, seed=1)
        time_blocks(model, ex, ey, b, 2, 0)                       # compile outside the timing
        if args.shift:
            batches = ShiftedBatches(ex, ey, b, max_shift=2, seed=0)
            t0 = time.perf_counter()
            model.fit(batches, epochs=1, verbose=0, shuffle=False)
        else:
            t0 = time.perf_counter()
            model.fit(ex, ey, batch_size=b, epochs=1, verbose=0, shuffle=False)
        seconds = time.perf_counter() - t0
        result["measured_epoch"] = {"images": n, "batch_size": b, "shift": args.shift, "seconds": seconds,
                                    "images_per_second": n / seconds}
        print(f"measured: one {n:,}-image epoch at batch {b}{' with ±2 px shifts' if args.shift else ''}: "
              f"{seconds:.2f} s ({n / seconds:.0f} images/s)")

    result["environment"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_description(), "backend": keras.backend.backend(), "keras": keras.__version__,
        "python": platform.python_version(), "machine": platform.platform(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "settings": vars(args)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
