"""Wrong answers (each must be refused) and alternative correct answers (each must pass) for the
exercises of chapters 2 and 3, written as a student would from the task texts alone."""

import math

import numpy as np
import pytest
from keras import ops

from capslib import exercises as E
from mutation_suite import registry, run_right, run_wrong

WRONG, RIGHT, wrong, right = registry()


# =========================================================================== 2.1 conv output size


@wrong("2.1", "padding_outside_the_floor")
def pad_rounded_apart(size, kernel, stride=1, padding=0):
    return (size - kernel) // stride + 2 * padding // stride + 1


@wrong("2.1")
def pad_rounded_apart_ceil(size, kernel, stride=1, padding=0):
    return (size - kernel) // stride + math.ceil(2 * padding / stride) + 1


@wrong("2.1", ("not", "ceil_not_floor"))
def padding_counted_twice(size, kernel, stride=1, padding=0):
    return (size + 4 * padding - kernel) // stride + 1


@wrong("2.1")
def rounded_to_nearest(size, kernel, stride=1, padding=0):
    return round((size + 2 * padding - kernel) / stride) + 1


@wrong("2.1")
def plus_one_inside(size, kernel, stride=1, padding=0):
    return (size + 2 * padding - kernel + 1) // stride


@wrong("2.1", "wrong_type")
def numpy_floor(size, kernel, stride=1, padding=0):
    return np.floor((size + 2 * padding - kernel) / stride) + 1


@wrong("2.1", "wrong_default")
def stride_two_by_default(size, kernel, stride=2, padding=0):
    return (size + 2 * padding - kernel) // stride + 1


@wrong("2.1")
def padding_subtracted(size, kernel, stride=1, padding=0):
    return (size - 2 * padding - kernel) // stride + 1


@wrong("2.1")
def same_padding_assumed(size, kernel, stride=1, padding=0):
    return -(-size // stride)


@right("2.1")
def window_starts_counted(size, kernel, stride=1, padding=0):
    return len(range(0, size + 2 * padding - kernel + 1, stride))


@right("2.1")
def ceil_form(size, kernel, stride=1, padding=0):
    return math.ceil((size + 2 * padding - kernel + 1) / stride)


@right("2.1")
def numpy_integers(size, kernel, stride=1, padding=0):
    return np.int64(size + 2 * padding - kernel) // np.int64(stride) + 1


# =========================================================================== 2.2 which pixels a unit sees


def _rf(layers):
    r, j = 1, 1
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
    return r, j


@wrong("2.2", "wrong_type")
def returns_only_r(layers, position=0):
    return _rf(layers)[0]


@wrong("2.2", "wrong_type")
def returns_a_list(layers, position=0):
    r, j = _rf(layers)
    return [position * j, position * j + r - 1]


@wrong("2.2")
def spaced_by_r(layers, position=0):
    r, _ = _rf(layers)
    return (position * r, position * r + r - 1)


@wrong("2.2")
def layers_taken_top_down(layers, position=0):
    r, j = _rf(list(reversed(layers)))
    return (position * j, position * j + r - 1)


@wrong("2.2", "input_modified")
def reverses_the_callers_list(layers, position=0):
    layers.reverse()                                  # the caller's list, reversed in place
    lo, hi = position, position
    for k, s in layers:
        lo, hi = lo * s, hi * s + k - 1
    return (lo, hi)


def test_a_changed_list_is_told_in_words_for_lists():
    v = E.check_receptive_field(reverses_the_callers_list, quiet=True)
    text = " ".join(v.message.split())
    assert v.mistake == "input_modified" and "list must come back" in text and "array" not in text, v.message


_RF_CACHE = {}


@wrong("2.2", "stale_result")
def cached_by_length_and_position(layers, position=0):
    """The review's answer, reported as wrong_default: its one wrong answer was on a defaults case."""
    key = (len(layers), position)
    if key not in _RF_CACHE:
        _RF_CACHE[key] = _rf_window(layers, position)
    return _RF_CACHE[key]


@wrong("2.2", "stale_result")
def cached_in_a_mutable_default(layers, position=0, _seen={}):   # noqa: B006 — the mistake under test
    return _seen.setdefault((len(layers), position), _rf_window(layers, position))


def _rf_window(layers, position):
    r, j = _rf(layers)
    return (position * j, position * j + r - 1)


@wrong("2.2", "wrong_type")
def a_none_in_the_pair(layers, position=0):
    first, last = _rf_window(layers, position)
    return (first, None if position else last)


def test_none_inside_a_tuple_is_not_a_forgotten_return():
    v = E.check_receptive_field(a_none_in_the_pair, quiet=True)
    assert "forget" not in v.message and "is None" in v.message, v.message


_CONV_CACHE = {}


@wrong("2.1", "stale_result")
def cached_by_size_and_kernel(size, kernel, stride=1, padding=0):
    if (size, kernel) not in _CONV_CACHE:
        _CONV_CACHE[(size, kernel)] = (size + 2 * padding - kernel) // stride + 1
    return _CONV_CACHE[(size, kernel)]


@wrong("2.2")
def first_stride_left_out(layers, position=0):
    r, _ = _rf(layers)
    j = 1
    for _, s in layers[1:]:
        j *= s
    return (position * j, position * j + r - 1)


@wrong("2.2")
def centred_window(layers, position=0):
    r, j = _rf(layers)
    return (position * j - r // 2, position * j + r // 2)


@wrong("2.2", "wrong_default")
def position_one_by_default(layers, position=1):
    r, j = _rf(layers)
    return (position * j, position * j + r - 1)


@right("2.2")
def traced_back(layers, position=0):
    first, last = position, position
    for kernel, stride in reversed(layers):
        first, last = first * stride, last * stride + kernel - 1
    return (first, last)


@right("2.2")
def numpy_ints(layers, position=0):
    strides = np.array([s for _, s in layers])
    kernels = np.array([k for k, _ in layers])
    jumps = np.concatenate([[1], np.cumprod(strides)])
    r = 1 + np.sum((kernels - 1) * jumps[:-1])
    return (position * jumps[-1], position * jumps[-1] + r - 1)


# =========================================================================== 3.1 the official code's order


@wrong("3.1", "position_major_order")
def capslib_order(x):
    return x.reshape(x.shape[0], -1, 8)


@wrong("3.1")
def six_by_six_hard_coded(x):
    return x.reshape(x.shape[0], 6, 6, 32, 8).transpose(0, 3, 1, 2, 4).reshape(x.shape[0], -1, 8)


@wrong("3.1")
def squashed_too(x):
    u = x.reshape(x.shape[0], x.shape[1], x.shape[2], 32, 8).transpose(0, 3, 1, 2, 4).reshape(x.shape[0], -1, 8)
    n2 = (u ** 2).sum(-1, keepdims=True)
    return n2 / (1 + n2) * u / np.sqrt(n2 + 1e-9)


@wrong("3.1", "input_modified")
def reshapes_the_callers_array(x):
    b, h, w, _ = x.shape
    x.shape = (b, h, w, 32, 8)                         # changes the caller's array object
    return x.transpose(0, 3, 1, 2, 4).reshape(b, -1, 8)


@wrong("3.1", "grouped_8_32")
def dims_then_types(x):
    b, h, w, _ = x.shape
    return x.reshape(b, h * w, 8, 32).transpose(0, 3, 1, 2).reshape(b, -1, 8)


@wrong("3.1")
def types_last(x):
    b, h, w, _ = x.shape
    return x.reshape(b, h, w, 32, 8).transpose(0, 1, 3, 2, 4).reshape(b, -1, 8)


@wrong("3.1", "wrong_type")
def returns_a_list_of_capsules(x):
    b, h, w, _ = x.shape
    return list(x.reshape(b, h, w, 32, 8).transpose(0, 3, 1, 2, 4).reshape(b, -1, 8))


@right("3.1")
def channels_first_like_the_official_code(x):
    b, h, w, c = x.shape
    caps = x.transpose(0, 3, 1, 2).reshape(b, 32, 8, h, w)
    return caps.transpose(0, 1, 3, 4, 2).reshape(b, -1, 8)


@right("3.1")
def stacked_types(x):
    b = x.shape[0]
    return np.concatenate([x[..., 8 * t:8 * t + 8].reshape(b, -1, 8) for t in range(32)], axis=1)


@right("3.1")
def keras_ops(x):
    b, h, w, _ = x.shape
    return ops.reshape(ops.transpose(ops.reshape(x, (b, h * w, 32, 8)), (0, 2, 1, 3)), (b, -1, 8))


# =========================================================================== 3.2 the port's capsules, fixed


@wrong("3.2", "port_unchanged")
def the_port_as_it_was(x):
    return x.reshape(-1, 6, 6, 8, 32).transpose(0, 4, 3, 1, 2).reshape(-1, 1152, 8)


@wrong("3.2", "reading_changed")
def capslib_reading(x):
    return x.reshape(-1, 6, 6, 32, 8).transpose(0, 3, 1, 2, 4).reshape(-1, 1152, 8)


@wrong("3.2", "order_changed")
def position_first(x):
    return x.reshape(-1, 6, 6, 8, 32).transpose(0, 1, 2, 4, 3).reshape(-1, 1152, 8)


@wrong("3.2")
def dims_moved_first(x):
    return x.reshape(-1, 6, 6, 8, 32).transpose(0, 3, 4, 1, 2).reshape(-1, 1152, 8)


@wrong("3.2")
def last_reshape_transposed(x):
    return x.reshape(-1, 6, 6, 8, 32).transpose(0, 4, 3, 1, 2).reshape(-1, 8, 1152).transpose(0, 2, 1)


@wrong("3.2", "batch_size_hard_coded")
def batch_of_one(x):
    return x.reshape(1, 6, 6, 8, 32).transpose(0, 4, 1, 2, 3).reshape(1, 1152, 8)


@right("3.2")
def fixed_transpose(x):
    return x.reshape(-1, 6, 6, 8, 32).transpose(0, 4, 1, 2, 3).reshape(-1, 1152, 8)


@right("3.2")
def positions_flattened_first(x):
    return x.reshape(-1, 36, 8, 32).transpose(0, 3, 1, 2).reshape(-1, 1152, 8)


@right("3.2")
def index_arithmetic(x):
    b = x.shape[0]
    i = np.arange(1152)
    t, pos = i // 36, i % 36
    d = np.arange(8)
    channels = d[None, :] * 32 + t[:, None]                        # (1152, 8)
    flat = x.reshape(b, 36, 256)
    return flat[:, pos[:, None], channels]


# =========================================================================== 3.3 squash, value and gradient


def _n2(s, axis):
    return ops.sum(ops.square(s), axis=axis, keepdims=True)


@wrong("3.3", "not_differentiable")
def numpy_squash(s, axis=-1):
    s = np.asarray(s)
    n2 = np.sum(s ** 2, axis=axis, keepdims=True)
    return n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)


@wrong("3.3", "nan_gradient_at_zero")
def where_trick(s, axis=-1):
    n2 = _n2(s, axis)
    return ops.where(n2 > 0, n2 / (1 + n2) * s / ops.sqrt(n2), 0.0)


@wrong("3.3", "nan_gradient_at_zero")
def keras_norm(s, axis=-1):
    n = ops.norm(s, axis=axis, keepdims=True)
    return n * s / (1 + n ** 2)


@wrong("3.3", "wrong_gradient")
def norm_behind_stop_gradient(s, axis=-1):
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / ops.stop_gradient(ops.sqrt(n2 + 1e-9))


@wrong("3.3", "axis_ignored")
def last_axis_always(s, axis=-1):
    n2 = _n2(s, -1)
    return n2 / (1 + n2) * s / ops.sqrt(n2 + 1e-9)


@wrong("3.3")
def short_capsules_zeroed(s, axis=-1):
    n2 = _n2(s, axis)
    v = n2 / (1 + n2) * s / ops.sqrt(n2 + 1e-9)
    return ops.where(n2 > 0.09, v, 0.0)


@wrong("3.3", "epsilon_too_big")
def big_epsilon(s, axis=-1):
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / ops.sqrt(n2 + 1e-4)


@wrong("3.3", "low_precision")
def in_float16(s, axis=-1):
    s16 = ops.cast(s, "float16")
    n2 = _n2(s16, axis)
    return n2 / (1 + n2) * s16 / ops.sqrt(n2 + 1e-4)


@wrong("3.3")
def gain_on_the_norm(s, axis=-1):
    n = ops.sqrt(_n2(s, axis) + 1e-9)
    return n / (1 + n) * s / n


@wrong("3.3", "fails_on_tensors")
def numpy_methods(s, axis=-1):
    n2 = (s ** 2).sum(axis=axis, keepdims=True)
    return n2 / (1 + n2) * s / (n2 + 1e-9) ** 0.5


@wrong("3.3", "input_modified")
def divides_in_place(s, axis=-1):
    n2 = np.sum(s ** 2, axis=axis, keepdims=True)
    s *= n2 / (1 + n2) / np.sqrt(n2 + 1e-9)
    return ops.convert_to_tensor(s)


@right("3.3")
def capslib_squash(s, axis=-1):
    import capslib
    return capslib.squash(s, axis=axis)


@right("3.3")
def epsilon_1e7(s, axis=-1):
    n2 = _n2(s, axis)
    return n2 / (1.0 + n2) * s / ops.sqrt(n2 + 1e-7)


@right("3.3")
def port_form_with_epsilon(s, axis=-1):
    n = ops.sqrt(_n2(s, axis) + 1e-12)
    return n * s / (1 + n ** 2)


@wrong("3.3", "nan_gradient_at_zero")
def epsilon_outside_the_sqrt(s, axis=-1):
    """At s = 0 its gradient holds 0·∞ in sqrt's derivative: NaN on JAX and PyTorch, 0 on TensorFlow
    alone. The check counts it as NaN on every backend (the review: it passed on TensorFlow only)."""
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / (ops.sqrt(n2) + 1e-9)


@wrong("3.3", "nan_gradient_at_zero")
def norm_floored_by_maximum(s, axis=-1):
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / ops.maximum(ops.sqrt(n2), 1e-7)


@wrong("3.3", "nan_gradient_at_zero")
def keras_norm_epsilon_outside(s, axis=-1):
    n = ops.norm(s, axis=axis, keepdims=True)
    return ops.square(n) / (1 + ops.square(n)) * s / (n + 1e-9)


@wrong("3.3", "not_keras_ops")
def tensorflow_itself(s, axis=-1):
    """Safe in value and gradient, but TensorFlow only: the task says keras.ops (the review's pass)."""
    import tensorflow as tf
    s = tf.convert_to_tensor(s)
    n2 = tf.reduce_sum(tf.square(s), axis=axis, keepdims=True)
    return n2 / (1 + n2) * s / tf.sqrt(n2 + 1e-12)


def _tf_sqrt(x):
    import tensorflow
    return tensorflow.sqrt(x)


@wrong("3.3", "not_keras_ops")
def tensorflow_in_a_helper(s, axis=-1):
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / _tf_sqrt(n2 + 1e-9)


@wrong("3.3", "not_keras_ops")
def jax_numpy(s, axis=-1):
    import jax.numpy as jnp
    n2 = jnp.sum(jnp.square(s), axis=axis, keepdims=True)
    return n2 / (1 + n2) * s / jnp.sqrt(n2 + 1e-9)


@wrong("3.3", "epsilon_too_big")
def epsilon_1e6(s, axis=-1):
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / ops.sqrt(n2 + 1e-6)


@right("3.3")
def keras_epsilon(s, axis=-1):
    import keras
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / ops.sqrt(n2 + keras.config.epsilon())


@right("3.3")
def in_float32(s, axis=-1):
    s = ops.cast(s, "float32")
    n2 = _n2(s, axis)
    return n2 / (1 + n2) * s / ops.sqrt(n2 + 1e-20)


def test_squash_task_states_its_tolerance_and_rules():
    task = E.exercise("3.3").task
    assert "exact values" not in task
    assert "1e-4" in task and "at most 1e-7 inside the square root" in task
    assert "keras.ops** only" in task and "on every backend" in task


def test_squash_names_a_tensor_of_another_library():
    """A function that returns another library's tensor is not told it returns a NumPy array (the
    review, under JAX). Here: a JAX array under TensorFlow, reached without naming jax in the code."""
    import importlib

    import keras
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the foreign library here is JAX")

    def my_squash(s, axis=-1):
        jnp = importlib.import_module("jax" + ".numpy")
        x = jnp.asarray(ops.convert_to_numpy(s))
        n2 = jnp.sum(x * x, axis=axis, keepdims=True)
        return n2 / (1 + n2) * x / jnp.sqrt(n2 + 1e-9)
    v = E.check_squash(my_squash, quiet=True)
    assert v.mistake == "not_differentiable", v.message
    text = " ".join(v.message.split())
    assert "NumPy array" not in text and "not a tensor of TensorFlow" in text, v.message


SQUASH_ANSWERS = ["epsilon_outside_the_sqrt", "norm_floored_by_maximum", "keras_norm_epsilon_outside",
                  "tensorflow_itself", "jax_numpy", "where_trick", "keras_norm", "numpy_squash", "epsilon_1e6",
                  "epsilon_1e7", "double_where", "capslib_squash"]


def _squash_verdicts():
    import json
    out = {name: E.check_squash(globals()[name], quiet=True) for name in SQUASH_ANSWERS}
    return json.dumps({k: [v.status, v.mistake] for k, v in out.items()}, sort_keys=True)


def test_squash_verdicts_do_not_depend_on_the_backend():
    """The same answers, checked under TensorFlow here and under JAX in a subprocess: same verdicts."""
    import json
    import os
    import subprocess
    import sys

    import keras
    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, KERAS_BACKEND=other, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")]))
    code = "import test_exercises_ch2_ch3 as t; print(t._squash_verdicts())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    mine = json.loads(_squash_verdicts())
    assert mine == theirs, (keras.backend.backend(), mine, other, theirs)
    assert mine["epsilon_outside_the_sqrt"] == ["mistake", "nan_gradient_at_zero"]
    assert mine["tensorflow_itself"] == ["mistake", "not_keras_ops"]


@right("3.3")
def double_where(s, axis=-1):
    n2 = _n2(s, axis)
    safe = ops.where(n2 > 0, n2, 1.0)                      # sqrt never sees 0, in value or gradient
    return n2 / (1 + n2) * s / ops.sqrt(safe)


# =========================================================================== 3.4 capsules for other sizes


def _out(n, k, s):
    return (n - k) // s + 1


@wrong("3.4")
def float_division(height, width):
    h = (height - 8 - 9) / 2 + 1
    w = (width - 8 - 9) / 2 + 1
    return (int(h * w * 32), 8)


@wrong("3.4")
def swapped_pair(height, width):
    return (8, _out(_out(height, 9, 1), 9, 2) * _out(_out(width, 9, 1), 9, 2) * 32)


@wrong("3.4")
def both_strides_two(height, width):
    return (_out(_out(height, 9, 2), 9, 2) * _out(_out(width, 9, 2), 9, 2) * 32, 8)


@wrong("3.4")
def width_for_both(height, width):
    return (_out(_out(width, 9, 1), 9, 2) ** 2 * 32, 8)


@wrong("3.4", "wrong_type")
def as_a_list(height, width):
    return [_out(_out(height, 9, 1), 9, 2) * _out(_out(width, 9, 1), 9, 2) * 32, 8]


@wrong("3.4")
def rounded_up(height, width):
    return (math.ceil((height - 17) / 2 + 1) * math.ceil((width - 17) / 2 + 1) * 32, 8)


@right("3.4")
def numpy_ints_pc(height, width):
    hw = (np.array([height, width]) - 9) // 1 + 1
    hw = (hw - 9) // 2 + 1
    return (np.prod(hw) * 32, 8)


@right("3.4")
def from_keras(height, width):
    import keras
    x = keras.KerasTensor((None, height, width, 1))
    shape = keras.layers.Conv2D(256, 9, strides=2).compute_output_shape(
        keras.layers.Conv2D(256, 9).compute_output_shape(x.shape))
    return (int(shape[1] * shape[2] * 32), 8)


# =========================================================================== the tests


@pytest.mark.parametrize("ex_id,name,fn,expect", WRONG, ids=[f"{e}-{n}" for e, n, _, _ in WRONG])
def test_wrong_answer_is_refused(ex_id, name, fn, expect):
    run_wrong(ex_id, fn, expect)


@pytest.mark.parametrize("ex_id,name,fn", RIGHT, ids=[f"{e}-{n}" for e, n, _ in RIGHT])
def test_alternative_correct_answer_passes(ex_id, name, fn):
    run_right(ex_id, fn)
