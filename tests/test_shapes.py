"""Shapes at every stage of CapsNet, and the ShapeError raised for every malformed input."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import capslib
from capslib import ShapeError, check_shape
from capslib.shapes import check_float, format_shape, static_shape


# --------------------------------------------------------------------------- check_shape


def test_shape_error_is_a_value_error():
    assert issubclass(ShapeError, ValueError)


def test_check_shape_message_is_exact():
    with pytest.raises(ShapeError) as err:
        check_shape(np.zeros((32, 1152, 16, 10)), ("batch", 1152, 10, 16), "DigitCaps", "u_hat",
                    names=("batch", "in_caps", "out_caps", "out_dim"))
    assert str(err.value) == (
        "ShapeError in DigitCaps (u_hat): expected (batch, 1152, 10, 16), got (32, 1152, 16, 10)"
        " — dims 2 (out_caps), 3 (out_dim) differ"
    )


def test_check_shape_message_single_dim():
    with pytest.raises(ShapeError) as err:
        check_shape(np.zeros((4, 1000, 8)), ("batch", 1152, 8), "PrimaryCaps", "u",
                    names=("batch", "in_caps", "in_dim"))
    assert str(err.value) == (
        "ShapeError in PrimaryCaps (u): expected (batch, 1152, 8), got (4, 1000, 8) — dim 1 (in_caps) differs"
    )


def test_check_shape_message_without_names():
    with pytest.raises(ShapeError, match=re.escape("— dim 2 differs")):
        check_shape(np.zeros((4, 10, 15)), ("batch", 10, 16), "Stage", "t")


def test_check_shape_wrong_rank_message():
    with pytest.raises(ShapeError) as err:
        check_shape(np.zeros((4, 1152)), ("batch", 1152, 8), "DigitCaps", "u")
    msg = str(err.value)
    assert msg.startswith("ShapeError in DigitCaps (u): expected rank 3")
    assert "got rank 2 (4, 1152)" in msg


def test_check_shape_returns_input_and_accepts_any_free_dim():
    x = np.zeros((5, 1152, 8))
    assert check_shape(x, ("batch", 1152, 8), "s", "t") is x
    assert check_shape(x, ("a", "b", "c"), "s", "t") is x


def test_check_shape_accepts_unknown_dims():
    class Fake:
        shape = (None, 1152, None)

    # unknown dims are never rejected, even where a fixed size is expected
    check_shape(Fake(), ("batch", 1152, 8), "s", "t")
    assert static_shape(Fake()) == (None, 1152, None)
    with pytest.raises(ShapeError, match="dim 1 differs"):
        check_shape(Fake(), ("batch", 1000, 8), "s", "t")


def test_static_shape_and_format_shape():
    assert static_shape(np.zeros((2, 3))) == (2, 3)
    assert format_shape((None, 1152, 8)) == "(?, 1152, 8)"
    assert format_shape(("batch", 10)) == "(batch, 10)"
    assert format_shape((7,)) == "(7,)"
    with pytest.raises(ShapeError):
        static_shape([1, 2, 3])


def test_check_float():
    check_float(np.zeros(3, np.float32), "s", "t")
    check_float(np.zeros(3, np.float64), "s", "t")
    with pytest.raises(ShapeError, match=r"ShapeError in s \(t\): expected a float tensor, got dtype int32"):
        check_float(np.zeros(3, np.int32), "s", "t")


# --------------------------------------------------------------------------- every stage


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_shapes_at_every_stage(model, batch):
    x = np.random.default_rng(batch).uniform(0, 1, (batch, 28, 28, 1)).astype("float32")
    features = model.conv1(x)
    assert tuple(features.shape) == (batch, 20, 20, 256)
    primary_conv = model.primary_caps.preactivation(features)
    assert tuple(primary_conv.shape) == (batch, 6, 6, 256)
    u = model.primary_caps(features)
    assert tuple(u.shape) == (batch, 1152, 8)
    u_hat = model.digit_caps.predictions(u)
    assert tuple(u_hat.shape) == (batch, 10, 1152, 16)      # out-major inside the layer
    v, c = model.digit_caps(u, return_coupling=True)
    assert tuple(c.shape) == (batch, 1152, 10)
    assert tuple(v.shape) == (batch, 10, 16)
    lengths = model.length(v)
    assert tuple(lengths.shape) == (batch, 10)
    masked = model.mask(v)
    assert tuple(masked.shape) == (batch, 160)
    recon = model.decoder(masked)
    assert tuple(recon.shape) == (batch, 28, 28, 1)

    # values that the shapes promise
    c = keras.ops.convert_to_numpy(c)
    np.testing.assert_allclose(c.sum(axis=-1), 1.0, atol=1e-5)
    u_len = np.linalg.norm(keras.ops.convert_to_numpy(u), axis=-1)
    assert (u_len < 1).all()
    lengths = keras.ops.convert_to_numpy(lengths)
    assert ((lengths >= 0) & (lengths < 1)).all()

    # the whole model gives the same thing as the stages
    if batch != 128:  # the stages above already cover batch 128; skip a second 1–2 s pass
        model_lengths, model_recon = model(x)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model_lengths), lengths, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model_recon),
                                   keras.ops.convert_to_numpy(recon), rtol=1e-5, atol=1e-6)


def test_model_call_shapes_batch_128(model):
    x = np.random.default_rng(0).uniform(0, 1, (128, 28, 28, 1)).astype("float32")
    lengths, recon = model(x)
    assert tuple(lengths.shape) == (128, 10)
    assert tuple(recon.shape) == (128, 28, 28, 1)


def test_primary_capsule_layout(model, rng):
    """Capsule i = (row·6 + col)·32 + t holds channels t·8 … t·8+7 of the primary conv, squashed."""
    x = rng.uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    features = model.conv1(x)
    conv = keras.ops.convert_to_numpy(model.primary_caps.preactivation(features))
    u = keras.ops.convert_to_numpy(model.primary_caps(features))
    from conftest import squash_reference_np

    for row, col, t in [(0, 0, 0), (0, 0, 31), (0, 1, 0), (2, 3, 17), (5, 5, 31)]:
        i = (row * 6 + col) * 32 + t
        expected = squash_reference_np(conv[:, row, col, t * 8:(t + 1) * 8])
        np.testing.assert_allclose(u[:, i], expected, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def model36():
    keras.utils.set_random_seed(7)
    return capslib.CapsNet(input_shape=(36, 36, 1))


def test_configured_input_size_shapes(model36):
    x = np.random.default_rng(0).uniform(0, 1, (3, 36, 36, 1)).astype("float32")
    features = model36.conv1(x)
    assert tuple(features.shape) == (3, 28, 28, 256)
    assert tuple(model36.primary_caps.preactivation(features).shape) == (3, 10, 10, 256)
    u = model36.primary_caps(features)
    assert tuple(u.shape) == (3, 3200, 8)
    assert tuple(model36.digit_caps.W.shape) == (3200, 10, 16, 8)
    assert tuple(model36.digit_caps.predictions(u).shape) == (3, 10, 3200, 16)
    lengths, recon = model36(x)
    assert tuple(lengths.shape) == (3, 10)
    assert tuple(recon.shape) == (3, 36, 36, 1)


def test_configured_input_size_rejects_28(model36):
    with pytest.raises(ShapeError, match=r"ShapeError in CapsNet \(images\).*expected \(batch, 36, 36, 1\)"):
        model36(np.zeros((2, 28, 28, 1), np.float32))


# --------------------------------------------------------------------------- unknown batch


def test_unknown_batch_dim_is_accepted_when_tracing(model):
    fn = tf.function(lambda images: model(images), input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    concrete = fn.get_concrete_function()
    lengths_spec, recon_spec = concrete.structured_outputs
    assert lengths_spec.shape.as_list() == [None, 10]
    assert recon_spec.shape.as_list() == [None, 28, 28, 1]
    x = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    lengths, recon = fn(x)
    assert lengths.shape == (3, 10) and recon.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(lengths.numpy(), keras.ops.convert_to_numpy(model(x)[0]), rtol=1e-5, atol=1e-6)


def test_unknown_batch_dim_in_losses_and_mask():
    spec10 = tf.TensorSpec([None, 10], tf.float32)
    loss = tf.function(capslib.margin_loss, input_signature=[spec10, spec10])
    assert loss.get_concrete_function().structured_outputs.shape.as_list() == []
    img = tf.TensorSpec([None, 28, 28, 1], tf.float32)
    rec = tf.function(capslib.reconstruction_loss, input_signature=[img, img])
    assert rec.get_concrete_function().structured_outputs.shape.as_list() == []
    mask = capslib.Mask()
    fn = tf.function(lambda v, y: mask(v, y), input_signature=[tf.TensorSpec([None, 10, 16]), spec10])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, 160]
    route = tf.function(lambda u: capslib.dynamic_routing(u), input_signature=[tf.TensorSpec([None, 12, 4, 5])])
    assert route.get_concrete_function().structured_outputs.shape.as_list() == [None, 4, 5]


# --------------------------------------------------------------------------- malformed inputs


@pytest.mark.parametrize(
    "images, pattern",
    [
        (np.zeros((2, 28, 28), np.float32),
         r"ShapeError in CapsNet \(images\): expected rank 4 \(batch, 28, 28, 1\), got rank 3 \(2, 28, 28\)"
         r" — add a channel axis"),
        (np.zeros((28, 28), np.float32), r"ShapeError in CapsNet \(images\): expected rank 4"),
        (np.zeros((2, 1, 28, 28, 1), np.float32), r"ShapeError in CapsNet \(images\): expected rank 4"),
        (np.zeros((2, 32, 32, 1), np.float32),
         r"ShapeError in CapsNet \(images\): expected \(batch, 28, 28, 1\), got \(2, 32, 32, 1\)"
         r" — dims 1 \(height\), 2 \(width\) differ"),
        (np.zeros((2, 28, 28, 3), np.float32),
         r"ShapeError in CapsNet \(images\): expected \(batch, 28, 28, 1\), got \(2, 28, 28, 3\)"
         r" — dim 3 \(channels\) differs"),
        (np.zeros((2, 28, 28, 1), np.uint8),
         r"ShapeError in CapsNet \(images\): expected a float tensor, got dtype uint8 — scale uint8 images"),
        (np.zeros((2, 28, 28, 1), np.int32), r"ShapeError in CapsNet \(images\): expected a float tensor"),
        (np.zeros((0, 28, 28, 1), np.float32), r"ShapeError in CapsNet \(images\): empty batch \(0, 28, 28, 1\)"),
    ],
    ids=["rank3", "rank2", "rank5", "32x32", "3-channels", "uint8", "int32", "empty-batch"],
)
def test_model_rejects_malformed_images(model, images, pattern):
    with pytest.raises(ShapeError, match=pattern):
        model(images)


def test_encode_rejects_malformed_images(model):
    with pytest.raises(ShapeError, match=r"ShapeError in CapsNet \(images\)"):
        model.encode(np.zeros((2, 28, 28, 3), np.float32))


def test_predict_rejects_malformed_images(model):
    with pytest.raises(ShapeError, match=r"ShapeError in CapsNet \(images\).*dim 3 \(channels\) differs"):
        model.predict(np.zeros((4, 28, 28, 3), np.float32), verbose=0)


def test_margin_loss_rejects_integer_labels():
    y = np.array([3, 1, 4])
    lengths = np.full((3, 10), 0.5, np.float32)
    with pytest.raises(ShapeError, match=r"ShapeError in margin_loss \(y_true\).*one-hot") as err:
        capslib.margin_loss(y, lengths)
    assert "(3,)" in str(err.value)


@pytest.mark.parametrize("shape", [(3, 5), (3, 10, 1), (3, 11)])
def test_margin_loss_rejects_wrong_label_shapes(shape):
    with pytest.raises(ShapeError, match=r"ShapeError in margin_loss \(y_true\)"):
        capslib.margin_loss(np.zeros(shape, np.float32), np.full((3, 10), 0.5, np.float32))


def test_margin_loss_rejects_wrong_lengths_rank():
    with pytest.raises(ShapeError, match=r"ShapeError in margin_loss \(lengths\)"):
        capslib.margin_loss(np.zeros((3, 10), np.float32), np.zeros((3, 10, 16), np.float32))


def test_reconstruction_loss_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match=r"ShapeError in reconstruction_loss \(images\)"):
        capslib.reconstruction_loss(np.zeros((2, 28, 28), np.float32), np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ShapeError, match=r"ShapeError in reconstruction_loss \(images\)"):
        capslib.reconstruction_loss(np.zeros((2, 32, 32, 1), np.float32), np.zeros((2, 28, 28, 1), np.float32))


@pytest.mark.parametrize("labels", [np.array([1, 2]), np.zeros((2, 5), np.float32), np.zeros((2, 10, 1), np.float32)],
                         ids=["integer", "5-classes", "rank3"])
def test_mask_rejects_wrong_label_shapes(labels):
    mask = capslib.Mask(name="mask")
    v = np.zeros((2, 10, 16), np.float32)
    with pytest.raises(ShapeError, match=r"ShapeError in mask \(labels\)"):
        mask(v, labels)


def test_mask_rejects_wrong_capsule_rank():
    with pytest.raises(ShapeError, match=r"ShapeError in mask \(v\)"):
        capslib.Mask(name="mask")(np.zeros((2, 160), np.float32))


def test_unbuilt_digit_caps_rejects_wrong_rank():
    with pytest.raises(ShapeError, match=r"ShapeError in digit_caps"):
        capslib.DigitCaps(name="digit_caps")(np.zeros((2, 1152), np.float32))


def test_digit_caps_rejects_wrong_in_dim(model):
    with pytest.raises(ShapeError) as err:
        model.digit_caps(np.zeros((2, 1152, 7), np.float32))
    # Keras wraps errors raised inside Layer.call (same class, message with context around it)
    assert (
        "ShapeError in digit_caps (u): expected (batch, 1152, 8), got (2, 1152, 7) — dim 2 (in_dim) differs"
        in str(err.value)
    )


def test_digit_caps_rejects_wrong_in_caps_and_dtype(model):
    with pytest.raises(ShapeError, match=r"ShapeError in digit_caps \(u\).*dim 1 \(in_caps\) differs"):
        model.digit_caps(np.zeros((2, 1000, 8), np.float32))
    with pytest.raises(ShapeError, match=r"ShapeError in digit_caps \(u\): expected a float tensor"):
        model.digit_caps(np.zeros((2, 1152, 8), np.int32))


def test_dynamic_routing_rejects_rank3():
    with pytest.raises(ShapeError, match=r"ShapeError in dynamic_routing \(u_hat\): expected rank 4"):
        capslib.dynamic_routing(np.zeros((2, 1152, 16), np.float32))
    with pytest.raises(ShapeError, match=r"ShapeError in dynamic_routing \(u_hat\): expected rank 4 "
                                         r"\(batch, out_caps, in_caps, out_dim\)"):
        capslib.dynamic_routing(np.zeros((2, 10, 16), np.float32), out_major=True)


@pytest.mark.parametrize("iterations", [0, -1, 1.5, True, "3", None])
def test_dynamic_routing_rejects_bad_iterations(iterations):
    with pytest.raises(ShapeError, match=r"ShapeError in dynamic_routing \(iterations\)"):
        capslib.dynamic_routing(np.zeros((2, 12, 4, 5), np.float32), iterations=iterations)


def test_dynamic_routing_rejects_integer_input():
    with pytest.raises(ShapeError, match=r"ShapeError in dynamic_routing \(u_hat\): expected a float tensor"):
        capslib.dynamic_routing(np.zeros((2, 12, 4, 5), np.int32))
