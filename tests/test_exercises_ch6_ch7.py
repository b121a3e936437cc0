"""Wrong answers (each must be refused) and alternative correct answers (each must pass) for the
exercises of chapters 6 and 7, written as a student would from the task texts alone."""

import math

import numpy as np
import pytest
from keras import ops

from capslib import exercises as E
from mutation_suite import registry, run_right, run_wrong

WRONG, RIGHT, wrong, right = registry()


# =========================================================================== 6.1 capsule lengths


@wrong("6.1", "input_modified")
def squares_in_place(v):
    v **= 2
    return np.sqrt(v.sum(-1))


@wrong("6.1", "kept_dims")
def keepdims(v):
    return np.linalg.norm(v, axis=-1, keepdims=True)


@wrong("6.1", "epsilon_too_big")
def epsilon_1e4(v):
    return np.sqrt(np.sum(v ** 2, axis=-1) + 1e-4)


@wrong("6.1", "epsilon_too_big")
def epsilon_1e6(v):                                      # the review's case: a zero capsule 1e-3 long
    return np.sqrt(np.sum(v ** 2, axis=-1) + 1e-6)


@wrong("6.1", ("not", "epsilon_too_big"))
def epsilon_3e6(v):
    return np.sqrt(np.sum(v ** 2, axis=-1) + 3e-6)


@wrong("6.1")
def max_abs_component(v):
    return np.abs(v).max(-1)


@wrong("6.1", "low_precision")
def float16_lengths(v):
    return np.linalg.norm(v.astype(np.float16), axis=-1)


@wrong("6.1")
def ten_classes_hard_coded(v):
    return np.sqrt((v ** 2).sum(-1)).reshape(-1, 10)


@right("6.1")
def epsilon_1e7_inside(v):                              # the false rejection
    return np.sqrt(np.sum(v ** 2, axis=-1) + 1e-7)


@right("6.1")
def epsilon_1e9_inside(v):                              # within the allowance the task states
    return np.sqrt(np.sum(v ** 2, axis=-1) + 1e-9)


@right("6.1")
def floor_of_1e7_inside(v):                             # sqrt(max(|v|², 1e-7)): between |v| and sqrt(|v|² + 1e-7)
    return np.sqrt(np.maximum(np.sum(v ** 2, axis=-1), 1e-7))


def test_lengths_task_states_what_is_checked():
    """The review: the task spoke of capsules of length 1e-4 but accepted 1e-7 inside the sqrt
    without saying so. It now states the allowance, and a wrong epsilon hears the exact value."""
    task = E.exercise("6.1").task
    assert "at most 1e-7 inside the square root" in task and "3.2e-4" in task
    assert "(batch, out_caps)" in E.exercise("6.1").contract()
    v = E.check_capsule_lengths(epsilon_3e6, quiet=True)
    text = " ".join(v.message.split())
    assert "the exact value is 0 " in text and "allows up to 0.000316228" in text, v.message
    assert "expected 0.000316228" not in text, v.message
    v = E.check_capsule_lengths(lambda v: np.linalg.norm(v, axis=-1) + 1e-4, quiet=True)
    assert "expected 0.9" in " ".join(v.message.split()), v.message


@right("6.1")
def keras_norm(v):
    return ops.norm(v, axis=-1)


@right("6.1")
def einsum_dot(v):
    return np.sqrt(np.einsum("bjd,bjd->bj", v, v))


@right("6.1")
def capslib_length(v):
    import capslib
    return capslib.capsule_length(v)


# =========================================================================== 6.2 margin loss gradient


def _grad(y, lengths, batch_div=True):
    g = -2 * y * np.maximum(0, 0.9 - lengths) + 2 * 0.5 * (1 - y) * np.maximum(0, lengths - 0.1)
    return g / len(lengths) if batch_div else g


@wrong("6.2", "not_divided_by_batch")
def summed_over_the_batch(y, lengths):
    return _grad(y, lengths, batch_div=False)


@wrong("6.2", "wrong_type")
def returns_the_loss(y, lengths):
    L = y * np.maximum(0, 0.9 - lengths) ** 2 + 0.5 * (1 - y) * np.maximum(0, lengths - 0.1) ** 2
    return float(L.sum(-1).mean())


@wrong("6.2")
def one_label_assumed(y, lengths):
    y1 = np.eye(y.shape[1])[y.argmax(-1)]
    return _grad(y1, lengths)


@wrong("6.2")
def ten_classes_assumed(y, lengths):
    return _grad(y, lengths) * 10 / lengths.shape[1] if lengths.shape[1] != 10 else _grad(y, lengths)


@wrong("6.2", "input_modified")
def clips_in_place(y, lengths):
    np.clip(lengths, 0.0, 1.0, out=lengths)
    lengths += 0.0
    y *= 1.0
    g = _grad(y, lengths)
    lengths[...] = 0.5
    return g


@wrong("6.2")
def divided_by_batch_twice(y, lengths):
    return _grad(y, lengths) / len(lengths)


@wrong("6.2")
def present_term_only(y, lengths):
    return -2 * y * np.maximum(0, 0.9 - lengths) / len(lengths)


@right("6.2")
def with_where(y, lengths):
    present = np.where(lengths < 0.9, -2 * (0.9 - lengths), 0.0) * y
    absent = np.where(lengths > 0.1, 2 * 0.5 * (lengths - 0.1), 0.0) * (1 - y)
    return (present + absent) / lengths.shape[0]


@right("6.2")
def by_autodiff(y, lengths):
    import tensorflow as tf
    import capslib
    x = tf.constant(lengths)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = capslib.margin_loss(y, x)
    return tape.gradient(loss, x).numpy()


# =========================================================================== 6.3 mask by integer label


@wrong("6.3", "input_modified")
def zeroes_the_callers_v(v, labels):
    for n, label in enumerate(labels):
        keep = v[n, label].copy()
        v[n] = 0.0                                          # the case: the caller's v, zeroed
        v[n, label] = keep
    return v.reshape(len(v), -1).copy()


@wrong("6.3")
def ten_classes_hard_coded(v, labels):
    return (v * np.eye(10)[labels][:, :, None]).reshape(len(v), -1)


@wrong("6.3", "scaled_by_the_label")
def multiplied_by_labels(v, labels):
    return (v * labels[:, None, None]).reshape(len(v), -1)


@wrong("6.3", "longest_not_label")
def longest_kept(v, labels):
    keep = np.eye(v.shape[1])[np.linalg.norm(v, axis=-1).argmax(-1)]
    return (v * keep[:, :, None]).reshape(len(v), -1)


@wrong("6.3")
def label_as_one_hot_index(v, labels):
    return (v * np.eye(v.shape[1])[labels][:, None, :].transpose(0, 2, 1)).reshape(len(v), -1)[:, ::-1]


@right("6.3")
def comparison_mask(v, labels):
    keep = (np.arange(v.shape[1])[None, :] == labels[:, None])
    return (v * keep[:, :, None]).reshape(len(v), -1)


@right("6.3")
def fill_a_copy(v, labels):
    out = np.zeros_like(v)
    out[np.arange(len(v)), labels] = v[np.arange(len(v)), labels]
    return out.reshape(len(v), -1)


@right("6.3")
def via_capslib(v, labels):
    import capslib
    return capslib.Mask()(v, np.eye(v.shape[1], dtype="float32")[labels])


# =========================================================================== 6.4 mask by length, port layout


@wrong("6.4")
def lengths_over_the_classes(v):
    caps = v.transpose(0, 2, 1)
    lengths = np.linalg.norm(v, axis=2)                     # the port's class axis
    keep = np.eye(caps.shape[1])[lengths.argmax(-1) % caps.shape[1]]
    return (caps * keep[:, :, None]).reshape(len(v), -1)


@wrong("6.4", "largest_l1")
def l1_norm(v):
    caps = v.transpose(0, 2, 1)
    keep = np.eye(caps.shape[1])[np.abs(caps).sum(-1).argmax(-1)]
    return (caps * keep[:, :, None]).reshape(len(v), -1)


@wrong("6.4", "largest_component")
def infinity_norm(v):
    caps = v.transpose(0, 2, 1)
    keep = np.eye(caps.shape[1])[np.abs(caps).max(-1).argmax(-1)]
    return (caps * keep[:, :, None]).reshape(len(v), -1)


@wrong("6.4", "port_slot_order")
def flattened_as_it_came(v):
    lengths = np.linalg.norm(v, axis=1)
    keep = np.eye(v.shape[2])[lengths.argmax(-1)]
    return (v * keep[:, None, :]).reshape(len(v), -1)


@wrong("6.4", "input_modified")
def zeroes_in_place(v):
    lengths = np.linalg.norm(v, axis=1)
    for n, j in enumerate(lengths.argmax(-1)):
        col = v[n, :, j].copy()
        v[n] = 0.0
        v[n, :, j] = col
    return v.transpose(0, 2, 1).reshape(len(v), -1)


@wrong("6.4")
def squared_sum_of_signed(v):
    caps = v.transpose(0, 2, 1)
    keep = np.eye(caps.shape[1])[(caps.sum(-1) ** 2).argmax(-1)]
    return (caps * keep[:, :, None]).reshape(len(v), -1)


@right("6.4")
def take_along_axis(v):
    caps = v.transpose(0, 2, 1)
    j = np.linalg.norm(caps, axis=-1).argmax(-1)
    out = np.zeros_like(caps)
    out[np.arange(len(v)), j] = caps[np.arange(len(v)), j]
    return out.reshape(len(v), -1)


@right("6.4")
def squared_lengths_suffice(v):
    caps = np.swapaxes(v, 1, 2)
    n2 = (caps ** 2).sum(-1)
    keep = n2 == n2.max(-1, keepdims=True)
    return (caps * keep[..., None]).reshape(len(v), -1)


@right("6.4")
def via_capslib(v):
    import capslib
    return capslib.Mask()(np.ascontiguousarray(v.transpose(0, 2, 1)))


# =========================================================================== 6.5 decoder sizes


@wrong("6.5", "wrong_type")
def float_pixels(num_classes, capsule_dim, image_shape):
    return (num_classes * capsule_dim, float(np.prod(image_shape)))


@wrong("6.5")
def swapped(num_classes, capsule_dim, image_shape):
    h, w, c = image_shape
    return (h * w * c, num_classes * capsule_dim)


@wrong("6.5", "wrong_type")
def as_a_list(num_classes, capsule_dim, image_shape):
    h, w, c = image_shape
    return [num_classes * capsule_dim, h * w * c]


@wrong("6.5")
def hidden_layer_as_output(num_classes, capsule_dim, image_shape):
    return (num_classes * capsule_dim, 1024)


@right("6.5")
def numpy_prod(num_classes, capsule_dim, image_shape):
    return (num_classes * capsule_dim, int(np.prod(image_shape)))


@right("6.5")
def math_prod(num_classes, capsule_dim, image_shape):
    return (math.prod((num_classes, capsule_dim)), math.prod(image_shape))


# =========================================================================== 6.6 parameter counts


def _counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8, num_classes=10,
            digit_dim=16, digit_bias=False, bias_per_pair=False):
    h, w, c = image_shape
    grid = (((h - 8) - 9) // 2 + 1) * (((w - 8) - 9) // 2 + 1)
    in_caps = grid * primary_types
    pixels = h * w * c
    digit = in_caps * num_classes * digit_dim * primary_dim
    if digit_bias:
        digit += (in_caps * num_classes * digit_dim) if bias_per_pair else num_classes * digit_dim
    return {"conv1": 81 * c * conv_filters + conv_filters,
            "primary_caps": 81 * conv_filters * primary_types * primary_dim + primary_types * primary_dim,
            "digit_caps": digit,
            "decoder": (num_classes * digit_dim * 512 + 512) + (512 * 1024 + 1024) + (1024 * pixels + pixels)}


@wrong("6.6", "wrong_default")
def conv_filters_128(image_shape=(28, 28, 1), conv_filters=128, primary_types=32, primary_dim=8, num_classes=10,
                     digit_dim=16, digit_bias=False):
    return _counts(image_shape, conv_filters, primary_types, primary_dim, num_classes, digit_dim, digit_bias)


@wrong("6.6")
def bias_per_input_capsule(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                           num_classes=10, digit_dim=16, digit_bias=False):
    return _counts(image_shape, conv_filters, primary_types, primary_dim, num_classes, digit_dim, digit_bias,
                   bias_per_pair=True)


@wrong("6.6", "wrong_type")
def a_tuple_of_counts(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8, num_classes=10,
                      digit_dim=16, digit_bias=False):
    return tuple(_counts(image_shape, conv_filters, primary_types, primary_dim, num_classes, digit_dim,
                         digit_bias).values())


@wrong("6.6")
def primary_conv_on_the_image_channels(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                                       num_classes=10, digit_dim=16, digit_bias=False):
    out = _counts(image_shape, conv_filters, primary_types, primary_dim, num_classes, digit_dim, digit_bias)
    out["primary_caps"] = 81 * image_shape[2] * primary_types * primary_dim + primary_types * primary_dim
    return out


@wrong("6.6")
def decoder_to_a_square_image(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8,
                              num_classes=10, digit_dim=16, digit_bias=False):
    h, w, c = image_shape
    return _counts((h, h, c), conv_filters, primary_types, primary_dim, num_classes, digit_dim, digit_bias)


@right("6.5")
def numpy_integers_pair(num_classes, capsule_dim, image_shape):
    return (np.int64(num_classes) * capsule_dim, np.prod(np.array(image_shape, dtype=np.int64)))


@right("6.6")
def from_capslib(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8, num_classes=10,
                 digit_dim=16, digit_bias=False):
    import capslib
    m = capslib.CapsNet(input_shape=image_shape, num_classes=num_classes, conv_filters=conv_filters,
                        primary_types=primary_types, primary_dim=primary_dim, digit_dim=digit_dim,
                        use_bias=digit_bias)
    return {name: getattr(m, name).count_params() for name in ("conv1", "primary_caps", "digit_caps", "decoder")}


@right("6.6")
def numpy_ints(image_shape=(28, 28, 1), conv_filters=256, primary_types=32, primary_dim=8, num_classes=10,
               digit_dim=16, digit_bias=False):
    return {k: np.int64(v) for k, v in _counts(image_shape, conv_filters, primary_types, primary_dim,
                                                num_classes, digit_dim, digit_bias).items()}


# =========================================================================== 6.7 reconstruction loss


@wrong("6.7", "not_reshaped")
def subtracted_as_given(images, reconstructions, weight=0.0005):
    return weight * float(np.mean(np.sum((images - reconstructions) ** 2, axis=(1, 2, 3))))


@wrong("6.7")
def reshaped_per_batch_wrongly(images, reconstructions, weight=0.0005):
    flat = images.reshape(-1, 784)
    return weight * float(np.mean(np.sum((flat - reconstructions.reshape(-1, 784)) ** 2, axis=1)))


@wrong("6.7", "wrong_default")
def weight_default_0005(images, reconstructions, weight=0.005):
    flat = images.reshape(len(images), -1)
    return weight * float(np.mean(np.sum((flat - reconstructions) ** 2, axis=1)))


@wrong("6.7", "input_modified")
def subtracts_in_place(images, reconstructions, weight=0.0005):
    reconstructions -= images.reshape(len(images), -1)
    return weight * float(np.mean(np.sum(reconstructions ** 2, axis=1)))


@wrong("6.7")
def transposed_flattening(images, reconstructions, weight=0.0005):
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)        # channels first: another pixel order
    return weight * float(np.mean(np.sum((flat - reconstructions) ** 2, axis=1)))


@right("6.7")
def reconstructions_to_images(images, reconstructions, weight=0.0005):
    r = reconstructions.reshape(images.shape)
    return weight * float(np.sum((images - r) ** 2) / len(images))


@right("6.7")
def via_capslib(images, reconstructions, weight=0.0005):
    import capslib
    return capslib.reconstruction_loss(images, reconstructions.reshape(images.shape), weight)


@right("6.7")
def mean_times_size(images, reconstructions, weight=0.0005):
    flat = images.reshape(len(images), -1)
    return weight * np.mean((flat - reconstructions) ** 2) * flat.shape[1]


# =========================================================================== 7.1 steps per epoch


@wrong("7.1", "wrong_type")
def numpy_ceil(n_images, batch_size, drop_remainder=False):
    return np.floor(n_images / batch_size) if drop_remainder else np.ceil(n_images / batch_size)


@wrong("7.1", "wrong_default")
def drops_by_default(n_images, batch_size, drop_remainder=True):
    return n_images // batch_size if drop_remainder else -(-n_images // batch_size)


@wrong("7.1")
def rounded(n_images, batch_size, drop_remainder=False):
    return round(n_images / batch_size)


@right("7.1")
def numpy_integer(n_images, batch_size, drop_remainder=False):
    n, b = np.int64(n_images), np.int64(batch_size)
    return n // b if drop_remainder else -(-n // b)


@right("7.1")
def math_ceil(n_images, batch_size, drop_remainder=False):
    return math.floor(n_images / batch_size) if drop_remainder else math.ceil(n_images / batch_size)


@right("7.1")
def counted(n_images, batch_size, drop_remainder=False):
    starts = range(0, n_images, batch_size)
    return sum(1 for s in starts if not drop_remainder or s + batch_size <= n_images)


# =========================================================================== 7.2 learning rate at an epoch


def _spe(n_images, batch_size):
    return -(-n_images // batch_size)


@wrong("7.2")
def floor_at_1e4(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return max(1e-3 * 0.96 ** (epoch * _spe(n_images, batch_size) / decay_steps), 1e-4)


@wrong("7.2", "steps_rounded_down")
def steps_floored(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return 1e-3 * 0.96 ** (epoch * (n_images // batch_size) / decay_steps)


@wrong("7.2", "wrong_default")
def batch_100_by_default(epoch, n_images=60000, batch_size=100, decay_steps=2000):
    return 1e-3 * 0.96 ** (epoch * _spe(n_images, batch_size) / decay_steps)


@wrong("7.2", "wrong_default")
def decay_1000_by_default(epoch, n_images=60000, batch_size=128, decay_steps=1000):
    return 1e-3 * 0.96 ** (epoch * _spe(n_images, batch_size) / decay_steps)


@wrong("7.2", "wrong_type")
def as_an_array(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return np.array([1e-3 * 0.96 ** (epoch * _spe(n_images, batch_size) / decay_steps)])


@wrong("7.2")
def steps_as_float(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return 1e-3 * 0.96 ** (epoch * n_images / batch_size / decay_steps)


@wrong("7.2", "off_by_one_step")
def last_step_of_the_epoch_before(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    """The review's false pass: with 2,000 steps per ×0.96 one step is 2e-5 relative."""
    return 1e-3 * 0.96 ** ((epoch * _spe(n_images, batch_size) - 1) / decay_steps)


@wrong("7.2", "off_by_one_step")
def one_step_after_the_first(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return 1e-3 * 0.96 ** ((epoch * _spe(n_images, batch_size) + 1) / decay_steps)


@wrong("7.2", "off_by_one_step")
def steps_counted_from_one(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    step = epoch * _spe(n_images, batch_size) + 1           # "the first step is step 1"
    return 1e-3 * 0.96 ** (step / decay_steps)


@wrong("7.2", "decay_steps_ignored")
def period_hard_coded(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return 1e-3 * 0.96 ** (epoch * _spe(n_images, batch_size) / 2000)


@wrong("7.2", "signature_mismatch")
def the_old_signature(epoch, n_images=60000, batch_size=128):
    return 1e-3 * 0.96 ** (epoch * _spe(n_images, batch_size) / 2000)


@right("7.2")
def keras_schedule(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    import keras
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=decay_steps, decay_rate=0.96)
    return float(schedule(epoch * math.ceil(n_images / batch_size)))


@right("7.2")
def exp_form(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    return 1e-3 * math.exp(epoch * _spe(n_images, batch_size) / decay_steps * math.log(0.96))


@right("7.2")
def step_by_step(epoch, n_images=60000, batch_size=128, decay_steps=2000):
    lr, per_step = 1e-3, 0.96 ** (1 / decay_steps)
    return lr * per_step ** (epoch * _spe(n_images, batch_size))


# =========================================================================== 7.3 the port's loss, fixed


def _loss(labels, lengths):
    t = np.eye(lengths.shape[-1])[labels]
    per = t * np.maximum(0.0, 0.9 - lengths) ** 2 + 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return float(per.sum(-1).mean())


@wrong("7.3", "port_unchanged")
def port_loss(y_true, lengths):
    t = np.eye(10)[y_true.astype(int)]
    per = t * np.maximum(0.0, 0.9 - lengths) ** 2 + 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return float(np.mean(np.sum(per, axis=1)))


@wrong("7.3")
def first_column_only(y_true, lengths):
    return _loss(y_true[:, 0].astype(int), lengths)


@wrong("7.3", "labels_not_cast")
def float_labels_used_as_indices(y_true, lengths):
    return _loss(np.asarray(y_true).reshape(-1), lengths)


@wrong("7.3", "softmax_on_lengths")
def softmax_first(y_true, lengths):
    e = np.exp(lengths - lengths.max(-1, keepdims=True))
    return _loss(y_true.reshape(-1).astype(int), e / e.sum(-1, keepdims=True))


@wrong("7.3", "wrong_type")
def per_example(y_true, lengths):
    t = np.eye(10)[y_true.reshape(-1).astype(int)]
    per = t * np.maximum(0.0, 0.9 - lengths) ** 2 + 0.5 * (1 - t) * np.maximum(0.0, lengths - 0.1) ** 2
    return per.sum(-1)


@wrong("7.3", "input_modified")
def reshapes_labels_in_place(y_true, lengths):
    y_true.shape = (-1,)
    return _loss(y_true.astype(int), lengths)


@wrong("7.3")
def labels_rounded_down_from_float_noise(y_true, lengths):
    return _loss((np.asarray(y_true).reshape(-1) * 0.999).astype(int), lengths)


@right("7.3")
def squeezed(y_true, lengths):
    return _loss(np.squeeze(y_true).astype(int), lengths)


@right("7.3")
def keras_one_hot(y_true, lengths):
    import capslib
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return capslib.margin_loss(ops.one_hot(labels, 10), lengths)


@right("7.3")
def rounded_labels(y_true, lengths):
    return _loss(np.rint(np.ravel(y_true)).astype(np.int64), lengths)


# =========================================================================== the tests


@pytest.mark.parametrize("ex_id,name,fn,expect", WRONG, ids=[f"{e}-{n}" for e, n, _, _ in WRONG])
def test_wrong_answer_is_refused(ex_id, name, fn, expect):
    run_wrong(ex_id, fn, expect)


@pytest.mark.parametrize("ex_id,name,fn", RIGHT, ids=[f"{e}-{n}" for e, n, _ in RIGHT])
def test_alternative_correct_answer_passes(ex_id, name, fn):
    run_right(ex_id, fn)
