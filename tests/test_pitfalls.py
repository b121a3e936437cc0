"""capslib.pitfalls: each deliberately wrong variant shows the symptom the pitfalls chapter claims.

Fast: no training longer than a couple of steps; the two memory runs and the Keras 2 run are
subprocesses (the Keras 2 one only where the tf-keras package is installed).
"""

import importlib.util
import os

import keras
import numpy as np
import pytest
from keras import ops

import capslib
from capslib import pitfalls
from capslib.data import one_hot


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _u_hat(rng, batch=2, n_in=64, n_out=10, dim=16, scale=0.3):
    return rng.normal(0.0, scale, (batch, n_in, n_out, dim)).astype("float32")


def _random_rotation(rng, dim=16):
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * np.sign(np.diag(r))).astype("float32")


# --------------------------------------------------------------------------- 1. the compile path

def test_port_loss_with_integer_labels_of_shape_batch_is_the_margin_loss(rng):
    y = rng.integers(0, 10, 16)
    lengths = rng.uniform(0, 1, (16, 10)).astype("float32")
    got = float(pitfalls.port_margin_loss(y.astype("float32"), lengths))
    want = float(capslib.margin_loss(one_hot(y), lengths))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_port_loss_with_labels_of_shape_batch_1_broadcasts_and_forgets_the_labels(rng):
    """Keras 2 hands the loss (batch, 1): one_hot → (batch, 1, 10), broadcast to (batch, batch, 10).
    Every image is scored against every label of its batch, so shuffling the labels changes nothing."""
    y = rng.integers(0, 10, (16, 1))
    lengths = rng.uniform(0, 1, (16, 10)).astype("float32")
    trace = {}
    loss = float(pitfalls.port_margin_loss(y, lengths, trace))
    assert trace["one_hot"] == (16, 1, 10)
    assert trace["per_class_loss"] == (16, 16, 10)
    shuffled = float(pitfalls.port_margin_loss(rng.permutation(y), lengths))
    np.testing.assert_allclose(shuffled, loss, rtol=1e-6)
    assert abs(loss - float(capslib.margin_loss(one_hot(y[:, 0]), lengths))) > 1e-3


def test_keras3_compile_hands_the_loss_float_labels_of_shape_batch(rng):
    x = rng.uniform(0, 1, (64, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    r = pitfalls.compile_path_demo(keras, x, y, x[:32], y[:32], "int", "port", "Accuracy",
                                   steps=2, eval_every=2)
    assert "error" not in r
    assert r["trace"]["y_true"] == [[32], "float32"]
    assert r["trace"]["one_hot"] == [32, 10]
    # today the string "Accuracy" is matched case-insensitively: sparse categorical accuracy
    assert "sparse_categorical_accuracy" in r["metric_chosen"]


def test_accuracy_class_scores_a_perfect_model_zero_and_refuses_integer_labels(rng):
    y = rng.integers(0, 10, 100)
    perfect = one_hot(y) * 0.9 + 0.05                      # right capsule 0.95, others 0.05
    acc = keras.metrics.Accuracy()
    acc.update_state(one_hot(y), perfect)
    assert float(acc.result()) == 0.0                      # exact equality, never true
    cat = keras.metrics.CategoricalAccuracy()
    cat.update_state(one_hot(y), perfect)
    assert float(cat.result()) == 1.0
    with pytest.raises(Exception):                          # (100,) vs (100, 10): incompatible
        keras.metrics.Accuracy().update_state(y.astype("float32"), perfect)


def test_capslib_margin_loss_refuses_integer_labels():
    with pytest.raises(capslib.ShapeError, match="one-hot"):
        capslib.margin_loss(np.zeros((4,), "float32"), np.zeros((4, 10), "float32"))


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None, reason="tf-keras (Keras 2) not installed")
def test_keras2_compile_hands_the_loss_labels_of_shape_batch_1(rng):
    x = rng.uniform(0, 1, (32, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 32)
    out = pitfalls.run_keras2_compile_demo(x, y, x[:8], y[:8], steps=1)
    port, accuracy_class, fixed = out["runs"]
    assert port["trace"]["y_true"] == [[32, 1], "int64"]
    assert port["trace"]["one_hot"] == [32, 1, 10]
    assert port["trace"]["per_class_loss"] == [32, 32, 10]
    assert "Shapes (32, 1) and (32, 10) are incompatible" in accuracy_class["error"]
    assert fixed["trace"]["y_true"] == [[32, 10], "float32"] and "error" not in fixed


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None, reason="tf-keras (Keras 2) not installed")
def test_seed_port_network_under_keras2_broadcasts_its_loss_and_refuses_the_accuracy_class(rng):
    """The port's own network (batch 128), one step per run: compile hands its loss (128, 1) labels
    and the loss broadcasts to (128, 128, 10); the author's train_step hands it (128,); the Accuracy
    class (what TF 2.5 made of the string 'Accuracy') stops fit; W starts at TF2's stddev 0.05."""
    x = rng.uniform(0, 1, (128, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 128)
    out = pitfalls.run_seed_port_demo(x, y, x[:8], y[:8], steps=1, eval_every=1)
    posted, override, accuracy_class = out["runs"]
    assert posted["trace"] == {"y_true": [[128, 1], "int32"], "one_hot": [128, 1, 10], "per_class_loss": [128, 128, 10]}
    assert override["trace"]["per_class_loss"] == [128, 10]
    assert "error" not in posted and "error" not in override
    assert "Shapes (128, 1) and (128, 10) are incompatible" in accuracy_class["error"]
    for run in (posted, override):
        assert abs(run["W_std_initial"] - 0.05) < 0.002


def test_seed_digit_stage_is_the_ports_routing(rng):
    """With one iteration (couplings 1/10) the port's stage is: s = Σ_i û / 10 laid out (B, 16, 10),
    squashed over the classes (pitfall 4's squash_wrong_axis), lengths over the 16 dims."""
    import tensorflow as tf
    u = rng.normal(0, 0.5, (3, 1152, 10, 8, 1)).astype("float32")
    W = rng.normal(0, 0.05, (1, 1152, 10, 16, 8)).astype("float32")
    got = pitfalls.seed_digit_stage(tf, u, W, stored_batch=1, iterations=1).numpy()
    u_hat = np.einsum("ijde,bije->bijd", W[0], u[..., 0])                  # (3, 1152, 10, 16)
    s = np.transpose(u_hat.sum(axis=1) / 10, (0, 2, 1))                      # (3, 16, 10)
    want = np.linalg.norm(_np(pitfalls.squash_wrong_axis(s)), axis=1)        # (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_seed_digit_stage_built_with_batch_1_broadcasts_and_tiles_w_once(rng):
    """The port builds with batch 1: its logits (1, 1152, 16, 10) broadcast over any batch. Had it been
    built with the training batch, any other batch (a last partial one) would fail."""
    import tensorflow as tf
    W = rng.normal(0, 0.05, (1, 1152, 10, 16, 8)).astype("float32")
    for batch in (1, 3, 8):
        u = rng.normal(size=(batch, 1152, 10, 8, 1)).astype("float32")
        assert tuple(pitfalls.seed_digit_stage(tf, u, W, stored_batch=1).shape) == (batch, 10)
    with pytest.raises(Exception):
        pitfalls.seed_digit_stage(tf, rng.normal(size=(3, 1152, 10, 8, 1)).astype("float32"), W, stored_batch=8)


def test_recorded_tf25_runs_error_as_posted_and_show_the_loss_at_chance():
    rec = pitfalls.SEED_TF25_RECORDED
    assert rec["tensorflow"] == "2.5.0" and rec["random_normal_defaults"]["tf.random_normal_initializer"] == 0.05
    runs = {(r["train_step"], r["metric"]): r for r in rec["runs"]}
    for key in (("compile", "Accuracy"), ("override", "Accuracy")):     # the code as posted: no number at all
        assert "incompatible" in runs[key]["error"] and runs[key]["metric_chosen"] == "accuracy = Accuracy(accuracy)"
    posted, override = runs["compile", "accuracy"], runs["override", "accuracy"]
    assert posted["trace"]["per_class_loss"] == [128, 128, 10]
    assert max(posted["heldout_accuracy"]) < 0.25                        # chance, from the loss
    assert override["heldout_accuracy"][-1] > posted["heldout_accuracy"][-1] + 0.3


def test_recorded_keras2_seed_runs_show_chance_for_compile_and_learning_for_the_override():
    posted, override, accuracy_class = pitfalls.SEED_KERAS2_RECORDED["runs"]
    assert posted["trace"]["per_class_loss"] == [128, 128, 10] and override["trace"]["per_class_loss"] == [128, 10]
    assert max(posted["heldout_accuracy"]) < 0.2 < 0.5 < override["heldout_accuracy"][-1]
    assert "incompatible" in accuracy_class["error"]
    assert "tf-keras 2.21.0" in pitfalls.SEED_KERAS2_RECORDED["provenance"]


# --------------------------------------------------------------------------- 2. softmax on lengths

def test_softmax_on_lengths_puts_a_floor_under_the_margin_loss(rng):
    y = rng.integers(0, 10, 64)
    perfect = one_hot(y) * 0.95                             # right capsule 0.95, others 0
    assert float(capslib.margin_loss(one_hot(y), perfect)) == 0.0
    floor = (0.9 - np.e / (np.e + 9)) ** 2                  # best softmax output e/(e+9) ≈ 0.23
    assert float(pitfalls.margin_loss_on_softmax(one_hot(y), perfect)) >= floor - 1e-6
    lengths = keras.Variable(perfect)
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = pitfalls.margin_loss_on_softmax(one_hot(y), lengths)
    grad = _np(tape.gradient(loss, lengths.value))
    assert np.abs(grad).max() > 1e-3                        # still pushing a perfect answer


# --------------------------------------------------------------------------- 3. per-dimension logits

def test_per_dimension_routing_is_not_rotation_equivariant(rng):
    """Dot-product agreement does not depend on the basis of the 16 pose dims; elementwise does."""
    u_hat = _u_hat(rng)
    q = _random_rotation(rng)
    rotated = u_hat @ q.T
    v, c = capslib.dynamic_routing(u_hat, 3, return_coupling=True)
    v_rot, c_rot = capslib.dynamic_routing(rotated, 3, return_coupling=True)
    np.testing.assert_allclose(_np(v_rot), _np(v) @ q.T, atol=1e-5)
    np.testing.assert_allclose(_np(c_rot), _np(c), atol=1e-5)
    w = _np(pitfalls.routing_per_dimension_logits(u_hat, 3))
    w_rot = _np(pitfalls.routing_per_dimension_logits(rotated, 3))
    assert np.abs(w_rot - w @ q.T).max() > 100 * np.abs(_np(v_rot) - _np(v) @ q.T).max() + 1e-3


def test_per_dimension_routing_splits_one_capsule_differently_per_dimension(rng):
    _, c = pitfalls.routing_per_dimension_logits(_u_hat(rng), 3, return_coupling=True)
    c = _np(c)
    assert c.shape == (2, 64, 16, 10)
    np.testing.assert_allclose(c.sum(-1), 1.0, atol=1e-5)   # softmax over j, per dimension
    assert c.std(axis=2).max() > 1e-3                        # same (i, j), different couplings per dim
    assert pitfalls.routing_per_dimension_logits(_u_hat(rng), 1).shape == (2, 10, 16)
    # with one iteration (uniform couplings) it is plain routing
    np.testing.assert_allclose(_np(pitfalls.routing_per_dimension_logits(u := _u_hat(rng), 1)),
                               _np(capslib.dynamic_routing(u, 1)), atol=1e-6)


# --------------------------------------------------------------------------- 4. squash, wrong axis

def _port_s(rng, batch=4):
    return rng.normal(0, 1, (batch, 16, 10)).astype("float32")   # port layout (batch, dims, classes)


def test_squash_wrong_axis_meets_capslib_shape_assertions(rng):
    v = pitfalls.squash_wrong_axis(_port_s(rng))
    assert tuple(v.shape) == (4, 16, 10)
    with pytest.raises(capslib.ShapeError, match=r"DigitCaps \(v\).*\(4, 16, 10\)"):
        capslib.check_shape(v, ("batch", 10, 16), "DigitCaps", "v", ("batch", "out_caps", "out_dim"))
    with pytest.raises(capslib.ShapeError, match="mask"):
        capslib.Mask(name="mask")(v, one_hot(np.arange(4)))
    with pytest.raises(capslib.ShapeError, match="margin_loss"):
        capslib.margin_loss(one_hot(np.arange(4)), capslib.Length()(v))


def test_squash_wrong_axis_reshaped_back_passes_every_check_with_wrong_lengths(rng):
    s = _port_s(rng)
    right = _np(capslib.capsule_length(capslib.squash(np.transpose(s, (0, 2, 1)))))   # (4, 10)
    wrong = pitfalls.squash_wrong_axis(s)
    for fixed in (ops.reshape(wrong, (-1, 10, 16)), ops.transpose(wrong, (0, 2, 1))):
        capslib.check_shape(fixed, ("batch", 10, 16), "DigitCaps", "v")          # no error now
        lengths = _np(capslib.Length()(fixed))
        assert np.abs(lengths - right).max() > 0.1


# --------------------------------------------------------------------------- 5. unsquashed primaries

def test_unsquashed_primary_caps_are_not_bounded(rng):
    features = rng.uniform(0, 1, (2, 20, 20, 256)).astype("float32")
    right = capslib.PrimaryCaps(name="p")
    wrong = pitfalls.UnsquashedPrimaryCaps(name="q")
    right.build(features.shape)
    wrong.build(features.shape)
    wrong.set_weights([w * 10 for w in right.get_weights()])          # conv kernel and bias, ×10
    u_right, u_wrong = _np(right(features)), _np(wrong(features))
    assert u_wrong.shape == u_right.shape == (2, 1152, 8)
    assert np.linalg.norm(u_right, axis=-1).max() < 1.0
    assert np.linalg.norm(u_wrong, axis=-1).max() > 1.0
    np.testing.assert_allclose(_np(capslib.squash(u_wrong / 10)), u_right, atol=1e-5)


def test_capsnet_unsquashed_primary_runs(rng):
    model = pitfalls.capsnet_unsquashed_primary(conv_filters=16, primary_types=4, decoder_hidden=(8, 8))
    assert isinstance(model.primary_caps, pitfalls.UnsquashedPrimaryCaps)
    lengths, recon = model(rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32"))
    assert lengths.shape == (2, 10) and recon.shape == (2, 28, 28, 1)


# --------------------------------------------------------------------------- 6. batch baked in, W tiled

def test_tiled_digitcaps_same_maths_but_fixed_batch(rng):
    u = _np(capslib.squash(rng.normal(size=(4, 32, 8)).astype("float32")))
    right = capslib.DigitCaps(name="dc")
    right.build((None, 32, 8))
    tiled = pitfalls.TiledDigitCaps(name="tiled")
    tiled.build((4, 32, 8))
    tiled.set_W_from(right)
    np.testing.assert_allclose(_np(tiled(u)), _np(right(u)), atol=1e-5)
    assert right(u[:3]).shape == (3, 10, 16)
    with pytest.raises(Exception):                          # any other batch: the last partial one
        tiled(u[:3])
    with pytest.raises(capslib.ShapeError, match="batch size at build time"):
        pitfalls.TiledDigitCaps().build((None, 32, 8))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_tiled_digitcaps_peak_memory_is_larger():
    mem = pitfalls.measure_step_memory(("capslib", "tiled"), batch_size=16)
    right, tiled = mem["capslib"], mem["tiled"]
    # W tiled: 16 × 1,474,560 floats = 90 MiB, and as much again for its gradient
    assert tiled["step_peak_mib"] > right["step_peak_mib"] + 100


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_seed_digit_stage_peak_memory_is_larger_than_capslib():
    """The port tiles u ×10 and v ×1152 (not W): still more memory per step than capslib's einsum."""
    mem = pitfalls.measure_step_memory(("capslib", "seed"), batch_size=16)
    assert mem["seed"]["step_peak_mib"] > mem["capslib"]["step_peak_mib"] + 20


# --------------------------------------------------------------------------- 7. W stddev

def test_tf2_random_normal_initializer_default_is_0_05_read_from_tensorflow():
    """The port's W came from tf.random_normal_initializer(): stddev 0.05 in TF 2, not TF 1's 1.0."""
    import inspect

    import tensorflow as tf
    d = pitfalls.tf_random_normal_defaults()
    assert d["tf.random_normal_initializer"] == 0.05
    assert d["tf.compat.v1.random_normal_initializer"] == 1.0
    signature = inspect.signature(tf.random_normal_initializer)
    assert d["tf.random_normal_initializer"] == signature.parameters["stddev"].default
    w = tf.random_normal_initializer(seed=0)((1152, 10, 16, 8)).numpy()
    assert abs(float(w.std()) - 0.05) < 0.001


def test_w_stddev_1_saturates_lengths_and_couplings(rng):
    u = capslib.squash(rng.normal(size=(4, 1152, 8)).astype("float32"))
    stats = {}
    for stddev in (0.01, 1.0):
        layer = capslib.DigitCaps(kernel_initializer=keras.initializers.RandomNormal(stddev=stddev, seed=0))
        layer.build((None, 1152, 8))
        v, c = layer(u, return_coupling=True)
        stats[stddev] = (_np(capslib.capsule_length(v)), _np(c))
    lengths_small, c_small = stats[0.01]
    lengths_big, c_big = stats[1.0]
    assert lengths_small.max() < 0.2 and c_small.max() < 0.2          # near-uniform couplings
    assert lengths_big.min() > 0.95 and c_big.max() > 0.9             # every capsule ≈ 1; couplings saturate


def test_set_digitcaps_stddev():
    model = capslib.CapsNet(conv_filters=16, primary_types=4, decoder_hidden=(8, 8))
    pitfalls.set_digitcaps_stddev(model, 1.0)
    assert 0.95 < float(np.std(_np(model.digit_caps.W))) < 1.05


# --------------------------------------------------------------------------- 8. softmax over inputs

def test_softmax_over_inputs_normalises_the_wrong_axis(rng):
    u_hat = _u_hat(rng, n_in=1152, scale=0.05)
    v, c = pitfalls.routing_softmax_over_inputs(u_hat, 3, return_coupling=True)
    v_ok, c_ok = capslib.dynamic_routing(u_hat, 3, return_coupling=True)
    c, c_ok = _np(c), _np(c_ok)
    np.testing.assert_allclose(c.sum(axis=1), 1.0, atol=1e-4)        # sums to 1 over the 1152 inputs
    np.testing.assert_allclose(c_ok.sum(axis=2), 1.0, atol=1e-5)     # correct: over the 10 outputs
    assert np.abs(c.sum(axis=2) - 1.0).max() > 0.9                    # an input's vote no longer sums to 1
    assert c.max() < 0.01                                              # ≈ 1/1152 each
    assert _np(capslib.capsule_length(v)).max() < 0.05 * _np(capslib.capsule_length(v_ok)).max()


def test_recorded_keras2_run_shows_the_broadcast_and_chance_accuracy():
    port, accuracy_class, fixed = pitfalls.KERAS2_RECORDED["runs"]
    assert tuple(port["trace"]["y_true"][0]) == (32, 1)
    assert tuple(port["trace"]["per_class_loss"]) == (32, 32, 10)
    assert max(port["heldout_accuracy"]) < 0.3 < 0.7 < fixed["heldout_accuracy"][-1]
    assert "incompatible" in accuracy_class["error"]
    assert "tf-keras 2.21.0" in pitfalls.KERAS2_RECORDED["provenance"]


# --------------------------------------------------------------------------- 9. primary capsules across positions

def _position_channel_labels():
    """(1, 6, 6, 256) with value (row·6 + col)·1000 + channel, and a decoder value → (row, col, channel)."""
    rows, cols = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    labels = ((rows * 6 + cols)[None, :, :, None] * 1000 + np.arange(256)).astype("float32")
    return labels, lambda v: (int(v) // 1000 // 6, int(v) // 1000 % 6, int(v) % 1000)


def test_seed_primary_capsules_are_one_channel_at_eight_positions():
    labels, where = _position_channel_labels()
    caps = np.asarray(pitfalls.seed_primary_capsules(np, labels))
    assert caps.shape == (1, 1152, 8)
    assert [where(v) for v in caps[0, 0]] == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 4, 0), (0, 5, 0),
                                              (1, 0, 0), (1, 1, 0)]
    # capsule 4 runs off the end of channel 0's map into channel 32 (= dim 1 of type 0)
    assert [where(v) for v in caps[0, 4]] == [(5, 2, 0), (5, 3, 0), (5, 4, 0), (5, 5, 0), (0, 0, 32), (0, 1, 32),
                                              (0, 2, 32), (0, 3, 32)]
    channels, positions = caps[0] % 1000, caps[0] // 1000
    assert (positions.min(axis=1) != positions.max(axis=1)).all()           # every capsule spans positions
    assert int((channels.min(axis=1) != channels.max(axis=1)).sum()) == 128  # 4 per type span two channels
    # capslib's grouping: 8 channels t·8 … t·8 + 7 at ONE position
    ours = np.asarray(ops.convert_to_numpy(ops.reshape(labels, (-1, 1152, 8))))[0]
    assert ((ours // 1000).min(axis=1) == (ours // 1000).max(axis=1)).all()
    # the same function on tf and keras.ops
    import tensorflow as tf
    np.testing.assert_array_equal(pitfalls.seed_primary_capsules(tf, tf.constant(labels)).numpy(), caps)
    np.testing.assert_array_equal(ops.convert_to_numpy(pitfalls.seed_primary_capsules(ops, labels)), caps)


def test_seed_grouping_is_not_a_relabelling_of_the_channels():
    """Chapter 3: any regrouping of the 256 channels at one position is a permutation of the filters.
    The port's is not: no permutation of the channels makes its capsules from one position each."""
    labels, _ = _position_channel_labels()
    caps = np.asarray(pitfalls.seed_primary_capsules(np, labels))[0]
    for perm in (np.arange(256), np.random.default_rng(0).permutation(256)):
        permuted = np.asarray(pitfalls.seed_primary_capsules(np, labels[..., perm]))[0]
        assert ((permuted // 1000).min(axis=1) != (permuted // 1000).max(axis=1)).all()
    assert caps.shape == (1152, 8)


def test_seed_grouping_primary_caps_differs_from_capslib_only_in_the_grouping(rng):
    features = rng.uniform(0, 1, (2, 20, 20, 256)).astype("float32")
    right, wrong = capslib.PrimaryCaps(name="p"), pitfalls.SeedGroupingPrimaryCaps(name="q")
    right.build(features.shape)
    wrong.build(features.shape)
    wrong.set_weights(right.get_weights())                            # the same conv kernel and bias
    conv = _np(right.preactivation(features))
    u_wrong = _np(wrong(features))
    np.testing.assert_allclose(u_wrong, _np(capslib.squash(pitfalls.seed_primary_capsules(np, conv))), atol=1e-6)
    assert np.abs(u_wrong - _np(right(features))).max() > 0.1
    model = pitfalls.capsnet_seed_grouping(conv_filters=16, primary_types=4, decoder_hidden=(8, 8))
    assert isinstance(model.primary_caps, pitfalls.SeedGroupingPrimaryCaps)
    lengths, recon = model(rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32"))
    assert lengths.shape == (2, 10) and recon.shape == (2, 28, 28, 1)
