"""The layers one by one: parameter counts, DigitCaps (no tiling, no batch coupling, stateless
routing), Length, Mask, Decoder, and config / save round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import capslib
from capslib import Decoder, DigitCaps, Length, Mask, PrimaryCaps, dynamic_routing
from conftest import routing_reference_np, squash_reference_np


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def squashed(rng, shape, scale=1.0):
    return squash_reference_np(rng.normal(0, scale, shape)).astype("float32")


# --------------------------------------------------------------------------- parameter counts


def test_parameter_count_default(model):
    # The default has the official code's (10, 16) DigitCaps bias.
    assert model.count_params() == 8_215_728
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 8_215_728
    assert model.conv1.count_params() == 20_992
    assert model.primary_caps.count_params() == 5_308_672
    assert model.digit_caps.count_params() == 1_474_560 + 160
    assert tuple(model.digit_caps.bias.shape) == (10, 16)
    assert model.decoder.count_params() == 1_411_344
    assert model.length.weights == [] and model.mask.weights == []


def test_parameter_count_without_bias():
    m = capslib.CapsNet(use_bias=False)                # the paper's Eq. 2 exactly
    assert m.count_params() == 8_215_568
    assert m.digit_caps.count_params() == 1_474_560 and m.digit_caps.bias is None


def _truncated_normal_std(stddev):
    # The std of N(0, σ²) cut at ±2σ (what TruncatedNormal draws, in TF1 and Keras 3 alike).
    from math import erf, exp, pi, sqrt
    z = 2.0
    phi, Phi = exp(-z * z / 2) / sqrt(2 * pi), 0.5 * (1 + erf(z / sqrt(2)))
    return stddev * sqrt(1 - 2 * z * phi / (2 * Phi - 1))


def test_default_initialisation_is_the_official_codes():
    # research/capsules: conv1 kernel TN(5e-2); weight_variable's default TN(0.1) for the primary
    # conv, W and (via stddev=0.1) the decoder; every bias a constant 0.1.
    keras.utils.set_random_seed(0)
    m = capslib.CapsNet()
    kernels = {"conv1": (m.conv1.kernel, 0.05), "primary": (m.primary_caps.conv.kernel, 0.1),
               "W": (m.digit_caps.W, 0.1)}
    kernels.update({f"decoder {d.name}": (d.kernel, 0.1) for d in m.decoder.dense})
    for name, (kernel, stddev) in kernels.items():
        w = to_np(kernel)
        assert np.abs(w).max() <= 2 * stddev + 1e-7, name                        # truncated at 2σ
        assert abs(w.std() / _truncated_normal_std(stddev) - 1) < 0.05, (name, w.std())
        assert abs(w.mean()) < 0.05 * stddev, name
    biases = [m.conv1.bias, m.primary_caps.bias, m.digit_caps.bias] + [d.bias for d in m.decoder.dense]
    for b in biases:
        np.testing.assert_array_equal(to_np(b), np.float32(0.1))


def test_official_primary_capsules_scale_the_conv_by_one_over_the_types(rng):
    # The official conv_slim_capsule routes the conv through one iteration over 32 types with zero
    # logits: pre-activation = conv / 32 + bias. capslib's init="official" does the same.
    keras.utils.set_random_seed(0)
    m = capslib.CapsNet(conv_filters=16, primary_types=4)
    pc = m.primary_caps
    assert pc.conv_scale == 1 / 4 and capslib.CapsNet(init="keras").primary_caps.conv_scale == 1.0
    features = m.conv1(rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32"))
    raw = to_np(keras.ops.conv(features, pc.conv.kernel, strides=2))              # (2, 6, 6, 32), no bias
    np.testing.assert_allclose(to_np(pc.preactivation(features)), raw / 4 + 0.1, rtol=1e-5, atol=1e-6)
    u = squash_reference_np((raw / 4 + 0.1).reshape(2, 6 * 6 * 4, 8))
    np.testing.assert_allclose(to_np(pc(features)), u, rtol=1e-4, atol=1e-6)
    assert PrimaryCaps.from_config(pc.get_config()).conv_scale == 1 / 4


@pytest.mark.parametrize("init", ["official", "keras"])
def test_no_two_layers_start_from_the_same_draws(init):
    # An unseeded Keras initializer returns the same numbers at every call: layers must not share one.
    keras.utils.set_random_seed(0)
    m = capslib.CapsNet(init=init)
    kernels = [m.conv1.kernel, m.primary_caps.conv.kernel, m.digit_caps.W] + [d.kernel for d in m.decoder.dense]
    starts = [to_np(k).ravel()[:500] for k in kernels]
    for a in range(len(starts)):
        for b in range(a):
            assert not np.allclose(starts[a], starts[b]), (kernels[a].path, kernels[b].path)


def test_keras_initialisation_is_capslibs_former_default():
    keras.utils.set_random_seed(0)
    m = capslib.CapsNet(init="keras", use_bias=False)
    w = to_np(m.digit_caps.W)
    assert abs(w.std() / _truncated_normal_std(0.01) - 1) < 0.05
    for b in (m.conv1.bias, m.primary_caps.bias, m.decoder.dense[0].bias):
        assert not to_np(b).any()
    fan = 9 * 9 * 256 + 9 * 9 * 256                                             # glorot-uniform limit
    assert np.abs(to_np(m.primary_caps.conv.kernel)).max() <= np.sqrt(6 / fan) + 1e-7


def test_unknown_init_and_loss_balance_are_refused():
    with pytest.raises(ValueError, match="init must be one of .*'official', 'keras'.*got 'glorot'"):
        capslib.CapsNet(init="glorot")
    with pytest.raises(ValueError, match="loss_balance must be one of .*'paper', 'official'.*got 'sabour'"):
        capslib.CapsNet(loss_balance="sabour")


# --------------------------------------------------------------------------- DigitCaps


@pytest.fixture(scope="module")
def digit_caps():
    """A DigitCaps whose W is large enough that routing actually moves the couplings."""
    layer = DigitCaps(name="digit_caps")
    layer.build((None, 1152, 8))
    layer.W.assign(np.random.default_rng(3).normal(0, 0.3, (1152, 10, 16, 8)).astype("float32"))
    return layer


def test_digit_caps_weight_is_one_untiled_variable(model):
    layer = model.digit_caps
    assert len(layer.weights) == 2                               # W and the (10, 16) bias
    assert layer.weights[0] is layer.W and layer.weights[1] is layer.bias
    assert tuple(layer.W.shape) == (1152, 10, 16, 8)
    assert layer.W.path.endswith("W")


def test_digit_caps_graph_never_tiles_w(model):
    """Trace the layer with an unknown batch: no Tile op, and nothing W-sized per example."""
    layer = model.digit_caps
    fn = tf.function(lambda u: layer(u), input_signature=[tf.TensorSpec([None, 1152, 8], tf.float32)])
    graph = fn.get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    assert "Tile" not in op_types
    for op in graph.get_operations():
        for t in op.outputs:
            if t.shape.rank is not None and t.shape.rank >= 5:
                raise AssertionError(f"{op.type} {op.name} makes a rank-{t.shape.rank} tensor {t.shape}: W tiled?")
            if t.shape.rank == 4 and t.shape.as_list()[1:] in ([1152, 10, 16], [1152, 10, 128]):
                raise AssertionError(f"{op.type} {op.name} makes {t.shape}: W tiled to the batch?")


def test_digit_caps_predictions_layout(digit_caps, rng):
    u = squashed(rng, (2, 1152, 8))
    u_hat = to_np(digit_caps.predictions(u))
    assert u_hat.shape == (2, 10, 1152, 16)
    W = to_np(digit_caps.W)
    for n, j, i in [(0, 0, 0), (1, 9, 1151), (0, 3, 500), (1, 7, 17)]:
        np.testing.assert_allclose(u_hat[n, j, i], W[i, j] @ u[n, i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_bias", [False, True])
def test_digit_caps_matches_reference(rng, use_bias):
    layer = DigitCaps(use_bias=use_bias, routing_iterations=3)
    layer.build((None, 1152, 8))
    W = rng.normal(0, 0.3, (1152, 10, 16, 8)).astype("float32")
    layer.W.assign(W)
    u = squashed(rng, (2, 1152, 8))
    v, c = layer(u, return_coupling=True)
    u_hat = np.einsum("ijde,nie->nijd", W.astype(np.float64), u.astype(np.float64))   # (n, in, out, dim)
    v_ref, c_ref = routing_reference_np(u_hat, 3, bias=np.full((10, 16), 0.1) if use_bias else None)
    np.testing.assert_allclose(to_np(v), v_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(c), c_ref, rtol=1e-5, atol=1e-5)
    assert np.abs(c_ref - 0.1).max() > 1e-2


def test_digit_caps_routing_iterations_used(rng):
    u = squashed(rng, (2, 1152, 8))
    W = rng.normal(0, 0.3, (1152, 10, 16, 8)).astype("float32")
    out = {}
    for r in (1, 3):
        layer = DigitCaps(routing_iterations=r, use_bias=False)     # the paper's equations
        layer.build((None, 1152, 8))
        layer.W.assign(W)
        out[r] = to_np(layer(u))
        u_hat = np.einsum("ijde,nie->nijd", W.astype(np.float64), u.astype(np.float64))
        np.testing.assert_allclose(out[r], routing_reference_np(u_hat, r)[0], rtol=1e-5, atol=1e-5)
    assert np.abs(out[1] - out[3]).max() > 1e-3


def test_digit_caps_no_batch_coupling(digit_caps, rng):
    u = squashed(rng, (3, 1152, 8))
    v = to_np(digit_caps(u))
    assert np.abs(v).max() > 1e-2                  # the outputs are not trivially ~0
    per_example = np.concatenate([to_np(digit_caps(u[k:k + 1])) for k in range(3)])
    np.testing.assert_allclose(v, per_example, rtol=1e-5, atol=1e-6)


def test_digit_caps_example_does_not_depend_on_others(digit_caps, rng):
    u = squashed(rng, (3, 1152, 8))
    v = to_np(digit_caps(u))
    other = u.copy()
    other[1:] = squashed(rng, (2, 1152, 8), scale=3.0)
    v_other = to_np(digit_caps(other))
    np.testing.assert_allclose(v_other[0], v[0], rtol=1e-5, atol=1e-6)
    assert np.abs(v_other[1:] - v[1:]).max() > 1e-3


def test_digit_caps_routing_resets_every_call(digit_caps, rng):
    u = squashed(rng, (2, 1152, 8))
    first, c1 = digit_caps(u, return_coupling=True)
    second, c2 = digit_caps(u, return_coupling=True)
    np.testing.assert_array_equal(to_np(first), to_np(second))
    np.testing.assert_array_equal(to_np(c1), to_np(c2))
    # no routing state is kept as a variable
    assert [w.path.split("/")[-1] for w in digit_caps.weights] == ["W", "bias"]
    assert digit_caps.non_trainable_weights == []


def test_digit_caps_builds_for_other_input_sizes(rng):
    layer = DigitCaps(num_caps=4, dim=6, routing_iterations=2, use_bias=False)
    u = squashed(rng, (2, 20, 3))
    v = layer(u)
    assert tuple(v.shape) == (2, 4, 6)
    assert tuple(layer.W.shape) == (20, 4, 6, 3)
    u_hat = np.einsum("ijde,nie->nijd", to_np(layer.W).astype(np.float64), u.astype(np.float64))
    np.testing.assert_allclose(to_np(v), routing_reference_np(u_hat, 2)[0], rtol=1e-5, atol=1e-6)


def test_digit_caps_bias_is_routing_bias(rng):
    layer = DigitCaps(use_bias=True)
    layer.build((None, 1152, 8))
    layer.W.assign(rng.normal(0, 0.3, (1152, 10, 16, 8)).astype("float32"))
    layer.bias.assign(rng.normal(0, 0.5, (10, 16)).astype("float32"))
    u = squashed(rng, (2, 1152, 8))
    expected = dynamic_routing(layer.predictions(u), 3, out_major=True, bias=layer.bias)
    np.testing.assert_allclose(to_np(layer(u)), to_np(expected), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- PrimaryCaps


def test_primary_caps_standalone(rng):
    layer = PrimaryCaps(num_types=4, dim=3, kernel_size=3, strides=2)
    x = rng.normal(0, 1, (2, 9, 9, 5)).astype("float32")
    u = to_np(layer(x))
    assert u.shape == (2, 4 * 4 * 4, 3)
    assert layer.compute_output_shape((None, 9, 9, 5)) == (None, 64, 3)
    conv = to_np(layer.conv(x)) + to_np(layer.bias)                   # conv_scale 1: a plain conv + bias
    np.testing.assert_allclose(u, squash_reference_np(conv.reshape(2, 64, 3)), rtol=1e-4, atol=1e-6)
    assert (np.linalg.norm(u, axis=-1) < 1).all()


# --------------------------------------------------------------------------- Length, Mask, Decoder


def test_length(rng):
    v = squashed(rng, (4, 10, 16))
    lengths = Length()(v)
    assert tuple(lengths.shape) == (4, 10)
    assert keras.backend.standardize_dtype(lengths.dtype) == "float32"
    np.testing.assert_allclose(to_np(lengths), np.linalg.norm(v, axis=-1), rtol=1e-5, atol=1e-6)


def test_length_stays_float32_under_mixed_precision(rng):
    v = squashed(rng, (2, 10, 16)).astype("float16")
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = Length()
        lengths = layer(v)
    finally:
        keras.config.set_dtype_policy(old)
    assert layer.dtype_policy.name == "float32"
    assert keras.backend.standardize_dtype(lengths.dtype) == "float32"
    np.testing.assert_allclose(to_np(lengths), np.linalg.norm(v.astype(np.float32), axis=-1), rtol=1e-5, atol=1e-6)


def test_mask_by_labels_keeps_exactly_the_labelled_capsule(rng):
    v = squashed(rng, (5, 10, 16))
    labels = np.array([0, 3, 9, 3, 7])
    y = np.eye(10, dtype="float32")[labels]
    masked = to_np(Mask()(v, y))
    assert masked.shape == (5, 160)
    m = masked.reshape(5, 10, 16)
    for n, k in enumerate(labels):
        np.testing.assert_array_equal(m[n, k], v[n, k])
        others = np.delete(m[n], k, axis=0)
        assert not others.any()


def test_mask_by_labels_ignores_which_capsule_is_longest(rng):
    v = squashed(rng, (2, 10, 16))
    v[:, 4] *= 0.01                                  # capsule 4 is the shortest
    y = np.eye(10, dtype="float32")[[4, 4]]
    m = to_np(Mask()(v, y)).reshape(2, 10, 16)
    np.testing.assert_array_equal(m[:, 4], v[:, 4])
    assert not np.delete(m, 4, axis=1).any()


def test_mask_without_labels_keeps_the_longest(rng):
    v = squashed(rng, (6, 10, 16), scale=0.3)
    longest = np.array([2, 0, 9, 5, 5, 1])
    for n, k in enumerate(longest):
        v[n, k] = squash_reference_np(rng.normal(0, 3, 16))    # much longer than the rest
    m = to_np(Mask()(v)).reshape(6, 10, 16)
    assert (np.linalg.norm(v, axis=-1).argmax(axis=1) == longest).all()
    for n, k in enumerate(longest):
        np.testing.assert_array_equal(m[n, k], v[n, k])
        assert not np.delete(m[n], k, axis=0).any()


def test_mask_accepts_integer_one_hot(rng):
    v = squashed(rng, (2, 10, 16))
    y_int = np.eye(10, dtype="int32")[[1, 8]]
    np.testing.assert_array_equal(to_np(Mask()(v, y_int)), to_np(Mask()(v, y_int.astype("float32"))))


def test_decoder(model, rng):
    masked = rng.normal(0, 1, (3, 160)).astype("float32")
    out = to_np(model.decoder(masked))
    assert out.shape == (3, 28, 28, 1)
    assert ((out > 0) & (out < 1)).all()            # sigmoid
    assert [layer.units for layer in model.decoder.dense] == [512, 1024, 784]


def test_decoder_other_shape(rng):
    dec = Decoder(image_shape=(6, 5, 2), hidden=(7,))
    out = dec(rng.normal(0, 1, (2, 12)).astype("float32"))
    assert tuple(out.shape) == (2, 6, 5, 2)
    assert dec.count_params() == 12 * 7 + 7 + 7 * 60 + 60


# --------------------------------------------------------------------------- configs


def _copy_and_compare(layer, clone, inputs, **kwargs):
    clone(inputs, **kwargs)                            # build the clone
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_np(clone(inputs, **kwargs)), to_np(layer(inputs, **kwargs)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: PrimaryCaps(num_types=4, dim=3, kernel_size=3, strides=2, name="pc"), (2, 9, 9, 5)),
        (lambda: DigitCaps(num_caps=4, dim=6, routing_iterations=2, use_bias=True, name="dc",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.5)), (2, 20, 3)),
        (lambda: DigitCaps(), (2, 1152, 8)),
        (lambda: Length(name="len"), (2, 10, 16)),
        (lambda: Mask(name="m"), (2, 10, 16)),
        (lambda: Decoder(image_shape=(6, 5, 2), hidden=(7, 9), name="dec"), (2, 12)),
    ],
    ids=["PrimaryCaps", "DigitCaps-custom", "DigitCaps-default", "Length", "Mask", "Decoder"],
)
def test_layer_config_round_trip(make, shape, rng):
    layer = make()
    x = rng.normal(0, 1, shape).astype("float32")
    layer(x)                                           # build
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # and through the registered-name serialisation that .keras files use
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is type(layer) and again.get_config() == config
    _copy_and_compare(layer, clone, x)


def test_layer_configs_hold_the_arguments():
    cfg = DigitCaps(num_caps=4, dim=6, routing_iterations=2, use_bias=True).get_config()
    assert (cfg["num_caps"], cfg["dim"], cfg["routing_iterations"], cfg["use_bias"]) == (4, 6, 2, True)
    cfg = PrimaryCaps(num_types=4, dim=3, kernel_size=3, strides=1).get_config()
    assert (cfg["num_types"], cfg["dim"], cfg["kernel_size"], cfg["strides"]) == (4, 3, 3, 1)
    cfg = Decoder(image_shape=(6, 5, 2), hidden=(7,)).get_config()
    assert tuple(cfg["image_shape"]) == (6, 5, 2) and tuple(cfg["hidden"]) == (7,)


def test_capsnet_config_round_trip(model, rng):
    config = model.get_config()
    clone = capslib.CapsNet.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    x = rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    for a, b in zip(clone(x), model(x)):
        np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-6, atol=1e-7)


def test_capsnet_custom_config_round_trip():
    m = capslib.CapsNet(input_shape=(36, 36, 1), routing_iterations=2, use_bias=True, decoder_hidden=(64, 128),
                        reconstruction_weight=0.001)
    clone = capslib.CapsNet.from_config(m.get_config())
    assert clone.image_shape == (36, 36, 1)
    assert clone.digit_caps.routing_iterations == 2 and clone.digit_caps.use_bias
    assert clone.decoder.hidden == (64, 128) and clone.reconstruction_weight == 0.001
    assert clone.count_params() == m.count_params()


def test_capsnet_save_and_load(model, rng, tmp_path):
    path = tmp_path / "capsnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, capslib.CapsNet)
    assert loaded.get_config() == model.get_config()
    assert loaded.count_params() == 8_215_728
    x = rng.uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    for a, b in zip(loaded(x), model(x)):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    for w_loaded, w in zip(loaded.weights, model.weights):
        assert w_loaded.path == w.path
        np.testing.assert_array_equal(to_np(w_loaded), to_np(w))


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")   # never-fitted Adam
def test_compiled_capsnet_save_and_load(rng, tmp_path):
    """A model compiled with capslib.margin_loss reloads with its loss (margin_loss registered)."""
    m = capslib.CapsNet(use_bias=False, init="keras", loss_balance="official")
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=capslib.margin_loss, metrics=["categorical_accuracy"])
    path = tmp_path / "compiled.keras"
    m.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.count_params() == 8_215_568
    assert (loaded.init, loaded.loss_balance, loaded.margin_scale) == ("keras", "official", 1 / 20)
    assert loaded.loss is capslib.margin_loss
    x = rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    for a, b in zip(loaded(x), m(x)):
        np.testing.assert_array_equal(to_np(a), to_np(b))


def test_compiled_capsnet_loads_with_compile_false(rng, tmp_path):
    m = capslib.CapsNet()
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=capslib.margin_loss, metrics=["categorical_accuracy"])
    path = tmp_path / "compiled.keras"
    m.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    for a, b in zip(loaded(x), m(x)):
        np.testing.assert_array_equal(to_np(a), to_np(b))
