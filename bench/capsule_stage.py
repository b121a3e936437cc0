#!/usr/bin/env python
"""Benchmark of CapsNet's capsule stage: capslib against the "tiled" TF2-port baseline.

The capsule stage is everything between the primary capsules and the digit capsules:

    u (batch, 1152, 8), W (1152, 10, 16, 8)  →  û = W u  →  3 routing iterations  →  v (batch, 10, 16)

Each step runs it forward AND backward: the gradient of sum(v²) with respect to u and W, under
``tf.function(jit_compile=False)`` (no XLA: on this kind of CPU XLA is far slower). The first
calls (tracing, warm-up) are not timed; the figure is the median of the timed repeats.

Variants, each measured in its own subprocess so that peak memory belongs to one variant only:

  capslib  a ``capslib.DigitCaps`` layer (its einsum predictions + ``capslib.dynamic_routing``,
           whose backward is hand-written: dL/dû as one batched matmul)
  autodiff the same forward, with routing differentiated by TensorFlow's autodiff instead
           (``dynamic_routing(..., autodiff=True)``): shows what the hand-written backward buys
  tiled    the BASELINE, the tiled formulation some ports use (naturomics/CapsNet-Tensorflow's
           capsLayer.py: ``W = tf.tile(W, [cfg.batch_size, 1, 1, 1, 1])``): W tiled to
           (batch, 1152, 10, 16, 8), u to (batch, 1152, 10, 8, 1), one batched tf.matmul, routing
           on (batch, 1152, 10) logits. (The TF2 port the book answers tiles u ×10 and v ×1152; it
           builds its model with batch 1, so its tile of W is a single copy: see the pitfalls chapter.)

Then, for context, a full ``capslib.CapsNet`` training step (compile(Adam, margin_loss) +
train_on_batch), also in its own subprocess.

Memory ("peak extra MB") is the growth of the process's resident memory: peak RSS during the
warm-up and timed steps (``getrusage().ru_maxrss``, with the kernel's peak counter reset through
/proc/self/clear_refs after the model is built) minus the RSS measured right after importing
TensorFlow, building the model and creating the inputs. It is what running the steps costs on
top of an idle, built model. TensorFlow's own counter, ``tf.config.experimental.get_memory_info
('CPU:0')``, is also tried and reported: TF's default CPU allocator keeps no statistics, so it
fails unless ``--tf-bfc-allocator`` (TF_CPU_ALLOCATOR_USE_BFC=true) is given.

Time is wall-clock per step; the CPU time per step (user + system, all threads) is printed too,
as it is less disturbed by other processes on a shared machine. ``--rounds N`` alternates the
variants' processes (A B, B A, ...) so that a drifting load hits both alike.

    python bench/capsule_stage.py                 # the full run (batch 128, ~4–6 min on 2 busy cores)
    python bench/capsule_stage.py --quick         # smoke test: batch 16, 2 repeats (< 1 min)
    python bench/capsule_stage.py --json out.json # also write the results as JSON
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

IN_CAPS, IN_DIM, OUT_CAPS, OUT_DIM = 1152, 8, 10, 16
GOAL_TIME, GOAL_MEMORY = 0.3, 0.5            # capslib / tiled must be at most these
RESULT_TAG = "BENCH_RESULT "                 # the worker's JSON line on stdout starts with this
VARIANTS = ("capslib", "tiled", "autodiff")


# ---------------------------------------------------------------------------------------------
# Memory helpers (Linux)
# ---------------------------------------------------------------------------------------------

def current_rss_mb():
    """Resident memory of this process now, in MB (MiB), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """Peak resident memory of this process (since start, or since reset_peak_rss), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # ru_maxrss is in KiB on Linux


def reset_peak_rss():
    """Reset the kernel's peak-RSS counter to the current RSS (Linux ≥ 4.0). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The BASELINE: the tiled formulation some ports use, W copied per example (TF-only reference code)
# ---------------------------------------------------------------------------------------------

def tiled_squash(s, axis=-1, eps=1e-7):
    """The port's squash: |s|²/(1+|s|²) · s/|s|."""
    import tensorflow as tf
    sq = tf.reduce_sum(tf.square(s), axis=axis, keepdims=True)
    return sq / (1.0 + sq) * s / tf.sqrt(sq + eps)


def tiled_capsule_stage(u, W, iterations=3):
    """BASELINE, not capslib. u (batch, 1152, 8), W (1152, 10, 16, 8) → v (batch, 10, 16).

    W is tiled to the whole batch, (batch, 1152, 10, 16, 8), and u to (batch, 1152, 10, 8, 1);
    one batched matmul gives û (batch, 1152, 10, 16). Routing keeps the logits b as
    (batch, 1152, 10), softmax over the 10 output capsules (axis -1). Gradients flow through
    every iteration, as in capslib (no stop_gradient), so both variants compute the same thing.
    """
    import tensorflow as tf
    batch = tf.shape(u)[0]
    n_in, n_out, out_dim, in_dim = W.shape
    W_tiled = tf.tile(W[None], [batch, 1, 1, 1, 1])                        # (batch, 1152, 10, 16, 8)
    u_tiled = tf.tile(u[:, :, None, :, None], [1, 1, n_out, 1, 1])         # (batch, 1152, 10, 8, 1)
    u_hat = tf.squeeze(tf.matmul(W_tiled, u_tiled), axis=-1)               # (batch, 1152, 10, 16)
    b = tf.zeros([batch, n_in, n_out], dtype=u.dtype)                      # (batch, 1152, 10)
    for r in range(iterations):
        c = tf.nn.softmax(b, axis=-1)                                      # over the 10 outputs
        s = tf.reduce_sum(c[..., None] * u_hat, axis=1)                    # (batch, 10, 16)
        v = tiled_squash(s)
        if r < iterations - 1:
            b = b + tf.reduce_sum(u_hat * v[:, None], axis=-1)             # (batch, 1152, 10)
    return v


# ---------------------------------------------------------------------------------------------
# Worker: one variant, one process
# ---------------------------------------------------------------------------------------------

def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)             # all threads of this process
    return r.ru_utime + r.ru_stime


def _timed(fn, warmup, repeats):
    """Run fn warmup times untimed, then repeats times timed. Returns (wall times, CPU times) in
    seconds; CPU time (user + system, all threads) is less sensitive to other processes' load."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_seconds() - c0)
    return times, cpu


def _tf_memory_info(tf):
    try:
        info = tf.config.experimental.get_memory_info("CPU:0")
        return {"supported": True, "current_mb": info["current"] / 2**20, "peak_mb": info["peak"] / 2**20}
    except Exception as exc:                                   # ValueError on stock TF for CPU
        return {"supported": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"}


def _memory_baseline(tf):
    gc.collect()
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")   # only with TF's BFC allocator on CPU
    except Exception:
        pass
    baseline = current_rss_mb()
    peak_before = peak_rss_mb()
    reset_ok = reset_peak_rss()
    return baseline, peak_before, reset_ok


def _measure(fn, warmup, repeats, tf):
    """Time fn (see _timed) and read the memory: baseline after build, peak over warm-up + timed
    steps, and the peak of the timed steps alone (counter reset again after the warm-up)."""
    baseline, peak_before, reset_ok = _memory_baseline(tf)
    _timed(fn, warmup, 0)
    peak_warmup = peak_rss_mb()
    rss_after_warmup = current_rss_mb()
    reset_peak_rss()
    times, cpu = _timed(fn, 0, repeats)
    peak_timed = peak_rss_mb()
    memory = _memory_result(tf, baseline, peak_before, reset_ok, max(peak_warmup, peak_timed))
    memory["rss_after_warmup_mb"] = rss_after_warmup
    memory["steady_extra_mb"] = (peak_timed - baseline) if reset_ok else None
    return times, cpu, memory


def _memory_result(tf, baseline, peak_before, reset_ok, peak):
    return {
        "rss_baseline_mb": baseline,
        "rss_peak_mb": peak,
        "peak_extra_mb": peak - baseline,
        "peak_reset": reset_ok,
        # Without the reset, a peak from importing TF could hide the steps' peak.
        "peak_may_be_masked": (not reset_ok) and peak <= peak_before,
        "tf_memory_info": _tf_memory_info(tf),
    }


def _step_stats(batch, warmup, repeats, times, cpu):
    """The timing fields every worker reports: raw step times and CPU times, and their medians."""
    return {
        "warmup": warmup,
        "repeats": repeats,
        "step_times_s": times,
        "median_step_ms": 1000 * statistics.median(times),
        "images_per_s": batch / statistics.median(times),
        "step_cpu_s": cpu,
        "median_step_cpu_ms": 1000 * statistics.median(cpu),
    }


def run_stage_worker(variant, batch, warmup, repeats, iterations, seed):
    load_before = os.getloadavg()
    import numpy as np
    import tensorflow as tf
    import keras
    import capslib

    rng = np.random.default_rng(seed)
    u = tf.constant(rng.uniform(-0.3, 0.3, (batch, IN_CAPS, IN_DIM)).astype("float32"))
    # The same W in both variants (truncated-normal-like, stddev 0.01), so their losses agree.
    w_init = np.clip(rng.standard_normal((IN_CAPS, OUT_CAPS, OUT_DIM, IN_DIM)), -2, 2).astype("float32") * 0.01

    if variant in ("capslib", "autodiff"):
        layer = capslib.DigitCaps(num_caps=OUT_CAPS, dim=OUT_DIM, routing_iterations=iterations)
        layer.build((None, IN_CAPS, IN_DIM))
        layer.W.assign(w_init)
        W = layer.W

        def forward(x):
            if variant == "capslib":
                return layer(x)
            return capslib.dynamic_routing(layer.predictions(x), iterations, out_major=True, autodiff=True)
    elif variant == "tiled":
        W = tf.Variable(w_init, name="W")

        def forward(x):
            return tiled_capsule_stage(x, W, iterations)
    else:
        raise SystemExit(f"unknown variant {variant!r}")

    @tf.function(jit_compile=False)
    def train_step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            v = forward(x)
            loss = tf.reduce_sum(tf.square(v))
        grad_u, grad_W = tape.gradient(loss, [x, W])
        return loss, grad_u, grad_W

    @tf.function(jit_compile=False)
    def forward_step(x):
        return tf.reduce_sum(tf.square(forward(x)))

    def run_train():
        loss, gu, gw = train_step(u)
        return float(loss)                                    # waits for the step to finish

    train_times, train_cpu, memory = _measure(run_train, warmup, repeats, tf)
    # Forward alone, after the memory reading (its peak is below the training step's).
    fwd_times, _ = _timed(lambda: float(forward_step(u)), warmup, repeats)

    loss, gu, gw = train_step(u)
    return {
        "variant": variant,
        "batch": batch,
        "iterations": iterations,
        **_step_stats(batch, warmup, repeats, train_times, train_cpu),
        "forward_times_s": fwd_times,
        "median_forward_ms": 1000 * statistics.median(fwd_times),
        "loss": float(loss),
        "grad_u_norm": float(tf.norm(gu)),
        "grad_W_norm": float(tf.norm(gw)),
        "memory": memory,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "keras_backend": keras.backend.backend(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def run_fullstep_worker(batch, warmup, repeats, seed):
    load_before = os.getloadavg()
    import numpy as np
    import tensorflow as tf
    import keras
    import capslib

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, 28, 28, 1)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, batch)]
    model = capslib.CapsNet()
    model.compile(optimizer=keras.optimizers.Adam(), loss=capslib.margin_loss, jit_compile=False)

    times, cpu, memory = _measure(lambda: model.train_on_batch(x, y), warmup, repeats, tf)
    return {
        "variant": "capslib.CapsNet train_on_batch",
        "batch": batch,
        **_step_stats(batch, warmup, repeats, times, cpu),
        "memory": memory,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "jit_compile": model.jit_compile,
    }


# ---------------------------------------------------------------------------------------------
# Parent: spawn the workers, print the table, write the JSON
# ---------------------------------------------------------------------------------------------

def worker_env(bfc=False):
    env = dict(os.environ)
    if bfc:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env["KERAS_BACKEND"] = "tensorflow"                 # both variants on the same backend
    return env


def spawn(worker_args, timeout, bfc=False):
    cmd = [sys.executable, os.path.abspath(__file__), *worker_args]
    proc = subprocess.run(cmd, env=worker_env(bfc), capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise SystemExit(f"worker {' '.join(worker_args)} failed (exit {proc.returncode})")


def merge_rounds(runs):
    """One result per variant from its rounds: medians over all timed steps of all rounds, and
    the median over rounds of the peak memory; each round's own result is kept under "rounds"."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key, med in (("step_times_s", "median_step_ms"), ("forward_times_s", "median_forward_ms"),
                     ("step_cpu_s", "median_step_cpu_ms")):
        out[key] = [t for r in runs for t in r[key]]
        out[med] = 1000 * statistics.median(out[key])
    out["images_per_s"] = out["batch"] / (out["median_step_ms"] / 1000)
    mem = dict(runs[0]["memory"])
    for key in ("peak_extra_mb", "steady_extra_mb"):
        vals = [r["memory"][key] for r in runs if r["memory"].get(key) is not None]
        mem[key] = statistics.median(vals) if vals else None
    mem["peak_may_be_masked"] = any(r["memory"]["peak_may_be_masked"] for r in runs)
    mem["peak_reset"] = all(r["memory"]["peak_reset"] for r in runs)
    tfm = [r["memory"]["tf_memory_info"] for r in runs]
    if all(t["supported"] for t in tfm):
        mem["tf_memory_info"] = dict(tfm[0], peak_mb=statistics.median(t["peak_mb"] for t in tfm))
    out["memory"] = mem
    out["rounds"] = runs
    return out


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "ram_gb": mem_gb, "platform": platform.platform()}


def versions():
    code = ("import json, sys, numpy, tensorflow as tf, keras, capslib;"
            "print(json.dumps({'python': sys.version.split()[0], 'tensorflow': tf.__version__,"
            "'keras': keras.__version__, 'numpy': numpy.__version__, 'capslib': capslib.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], env=worker_env(), capture_output=True, text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"python": sys.version.split()[0], "error": out.stderr[-500:]}


def verdict(ratio, goal):
    return "PASS" if ratio <= goal else "MISS"


def fmt_mem(r):
    m = r["memory"]
    return f"{m['peak_extra_mb']:.0f}" + ("*" if m["peak_may_be_masked"] else "")


def fmt_steady(r):
    v = r["memory"].get("steady_extra_mb")
    return "n/a" if v is None else f"{v:.0f}"


def report(results, full, args):
    a, b = results["capslib"], results["tiled"]
    print()
    print(f"Capsule stage, forward + backward (grad of sum(v²) w.r.t. u and W), batch {args.batch}, "
          f"{args.iterations} routing iterations,")
    rounds = f" x {args.rounds} rounds (order alternated), pooled" if args.rounds > 1 else ""
    print(f"tf.function without XLA, median of {args.repeats} steps{rounds} after {args.warmup} warm-up; "
          "each variant in its own process.")
    print()
    print(f"{'variant':<10} {'median ms/step':>15} {'images/s':>10} {'peak extra MB':>14} "
          f"{'(steady MB)':>12} {'(forward ms)':>13}")
    print("-" * 78)
    for r in (a, b, results.get("autodiff")):
        if r is None:
            continue
        print(f"{r['variant']:<10} {r['median_step_ms']:15.1f} {r['images_per_s']:10.1f} "
              f"{fmt_mem(r):>14} {fmt_steady(r):>12} {r['median_forward_ms']:13.1f}")
    print()
    t_ratio = a["median_step_ms"] / b["median_step_ms"]
    m_ratio = a["memory"]["peak_extra_mb"] / b["memory"]["peak_extra_mb"]
    print(f"time   capslib/tiled = {t_ratio:.3f}x   goal <= {GOAL_TIME}x   {verdict(t_ratio, GOAL_TIME)}")
    print(f"memory capslib/tiled = {m_ratio:.3f}x   goal <= {GOAL_MEMORY}x   {verdict(m_ratio, GOAL_MEMORY)}")
    print("for information, capslib/tiled:")
    print(f"  CPU time per step (user+sys, all threads; less sensitive to other processes' load) "
          f"{a['median_step_cpu_ms'] / b['median_step_cpu_ms']:.3f}x  "
          f"({a['median_step_cpu_ms']:.0f} vs {b['median_step_cpu_ms']:.0f} CPU-ms)")
    print(f"  forward only {a['median_forward_ms'] / b['median_forward_ms']:.3f}x", end="")
    sa, sb = a["memory"].get("steady_extra_mb"), b["memory"].get("steady_extra_mb")
    print(f", steady memory {sa / sb:.3f}x" if sa is not None and sb else "")
    auto = results.get("autodiff")
    if auto is not None:
        print(f"  hand-written routing backward vs autodiff (capslib/autodiff): time "
              f"{a['median_step_ms'] / auto['median_step_ms']:.3f}x, peak memory "
              f"{a['memory']['peak_extra_mb'] / auto['memory']['peak_extra_mb']:.3f}x; "
              f"|dL/dW| {a['grad_W_norm']:.6g} vs {auto['grad_W_norm']:.6g}")
    rel = abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-30)
    print(f"check: sum(v²) capslib {a['loss']:.6g}, tiled {b['loss']:.6g} (rel. diff {rel:.1e}); "
          f"|dL/dW| {a['grad_W_norm']:.4g} vs {b['grad_W_norm']:.4g}")
    print()
    print("Memory: 'peak extra MB' = peak resident memory (RSS) of the variant's process during warm-up")
    print("(tracing included) and timed steps, minus its RSS after importing TF, building the model and")
    print("creating the inputs; the ratio uses it. 'steady MB' = the same over the timed steps only.")
    mask = any(r["memory"]["peak_may_be_masked"] for r in results.values())
    reset = all(r["memory"]["peak_reset"] for r in results.values())
    print("Peak counter reset via /proc/self/clear_refs: " + ("yes." if reset else "NO (steady n/a).")
          + (" * = the import-time peak may hide the step's peak." if mask else ""))
    tfm = b["memory"]["tf_memory_info"]
    if tfm["supported"]:
        pa, pb = (r["memory"]["tf_memory_info"]["peak_mb"] for r in (a, b))
        print(f"TF allocator peak (tf.config.experimental.get_memory_info('CPU:0'), BFC allocator, since the "
              f"baseline; weights and inputs included): capslib {pa:.0f} MB, tiled {pb:.0f} MB, ratio {pa / pb:.3f}x")
    else:
        print(f"tf.config.experimental.get_memory_info('CPU:0') does not work with TF's default CPU allocator: "
              f"{tfm['error']} (--tf-bfc-allocator makes it work)")
    if full is not None:
        print()
        print(f"Full training step (capslib.CapsNet, compile(Adam, margin_loss) + train_on_batch, "
              f"jit_compile={full['jit_compile']}), batch {full['batch']},")
        print(f"median of {full['repeats']} steps after {full['warmup']} warm-up: "
              f"{full['median_step_ms']:.1f} ms/step = {full['images_per_s']:.1f} images/s "
              f"({full['median_step_cpu_ms']:.0f} CPU-ms/step) "
              f"(peak extra {fmt_mem(full)} MB, steady {fmt_steady(full)} MB)")
    return {"time_ratio": t_ratio, "memory_ratio": m_ratio,
            "time_goal": GOAL_TIME, "memory_goal": GOAL_MEMORY,
            "time_verdict": verdict(t_ratio, GOAL_TIME), "memory_verdict": verdict(m_ratio, GOAL_MEMORY),
            "loss_rel_diff": rel}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time and memory of CapsNet's capsule stage (û = W u + 3 routing iterations, forward "
                    "and backward) for capslib.DigitCaps against the tiled TF2-port baseline, each variant "
                    "in its own subprocess, plus a full capslib.CapsNet training step.",
        epilog="Goals: capslib/tiled time <= 0.3x and peak memory <= 0.5x. 'Peak extra MB' is the peak "
               "RSS during the steps minus the RSS after import + build. Run with TF_CPP_MIN_LOG_LEVEL=2 "
               "TF_ENABLE_ONEDNN_OPTS=0 (set by default for the workers).")
    p.add_argument("--batch", type=int, default=128, help="batch size of the capsule stage (default 128)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant; the median is reported (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, tracing included (default 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="processes per variant, run in alternating order (A B, B A, ...); times are pooled "
                        "and the median over rounds of peak memory is reported (default 1)")
    p.add_argument("--iterations", type=int, default=3, help="routing iterations (default 3)")
    p.add_argument("--full-batch", type=int, default=None,
                   help="batch of the full CapsNet training step (default: same as --batch)")
    p.add_argument("--full-repeats", type=int, default=None,
                   help="timed full training steps (default: same as --repeats)")
    p.add_argument("--no-full", action="store_true", help="skip the full training step")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of capslib,tiled (ratios need both)")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 16, 2 repeats, 1 warm-up (< 1 min)")
    p.add_argument("--json", metavar="PATH", help="also write the results, versions and machine to PATH as JSON")
    p.add_argument("--tf-bfc-allocator", action="store_true",
                   help="run the workers with TF_CPU_ALLOCATOR_USE_BFC=true: TF's BFC allocator on CPU, so "
                        "tf.config.experimental.get_memory_info('CPU:0') works (it changes the allocator, "
                        "hence RSS and possibly speed; off by default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per worker process")
    p.add_argument("--worker", help=argparse.SUPPRESS)       # internal: run one measurement, print JSON
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup, args.rounds = 16, 2, 1, 1
    args.full_batch = args.full_batch or args.batch
    args.full_repeats = args.full_repeats or args.repeats
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        if args.worker == "full":
            out = run_fullstep_worker(args.full_batch, args.warmup, args.full_repeats, args.seed)
        else:
            out = run_stage_worker(args.worker, args.batch, args.warmup, args.repeats, args.iterations, args.seed)
        print(RESULT_TAG + json.dumps(out), flush=True)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    common = ["--batch", str(args.batch), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
              "--iterations", str(args.iterations), "--seed", str(args.seed)]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    results = {}
    runs = {v: [] for v in variants}
    for k in range(args.rounds):
        # Alternate the order (A B, B A, ...) so a drifting machine load hits both variants alike.
        for v in (variants if k % 2 == 0 else variants[::-1]):
            print(f"measuring {v} (round {k + 1}/{args.rounds}) ...", file=sys.stderr, flush=True)
            runs[v].append(spawn(["--worker", v, *common], args.timeout, args.tf_bfc_allocator))
    results = {v: merge_rounds(r) for v, r in runs.items()}
    full = None
    if not args.no_full:
        print("measuring the full CapsNet training step ...", file=sys.stderr, flush=True)
        full = spawn(["--worker", "full", "--full-batch", str(args.full_batch),
                      "--full-repeats", str(args.full_repeats), "--warmup", str(args.warmup),
                      "--seed", str(args.seed)], args.timeout, args.tf_bfc_allocator)
    load_end = os.getloadavg()

    machine = machine_info()
    print(f"{started:%Y-%m-%d %H:%M:%S} UTC  {machine['cpu_model']}, {machine['cores']} cores, "
          f"load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, "
          f"at end {'/'.join(f'{x:.2f}' for x in load_end)}")
    ratios = None
    if "capslib" in results and "tiled" in results:
        ratios = report(results, full, args)
    else:
        for r in results.values():
            print(f"{r['variant']}: {r['median_step_ms']:.1f} ms/step, {r['images_per_s']:.1f} images/s, "
                  f"peak extra {r['memory']['peak_extra_mb']:.0f} MB")
        if full is not None:
            print(f"full step: {full['median_step_ms']:.1f} ms/step, {full['images_per_s']:.1f} images/s")

    if args.json:
        doc = {
            "benchmark": "capsule_stage",
            "date_utc": started.isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "settings": {k: getattr(args, k) for k in ("batch", "repeats", "rounds", "warmup", "iterations",
                                                       "full_batch", "full_repeats", "quick", "seed")},
            "env": {k: worker_env(args.tf_bfc_allocator).get(k)
                    for k in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND",
                              "TF_CPU_ALLOCATOR_USE_BFC")},
            "versions": versions(),
            "machine": machine,
            "load_average": {"start": load_start, "end": load_end},
            "memory_definition": "peak_extra_mb = peak RSS (ru_maxrss, peak counter reset after build) during "
                                 "warm-up + timed steps minus RSS after TF import, model build and inputs",
            "results": results,
            "full_training_step": full,
            "ratios": ratios,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
