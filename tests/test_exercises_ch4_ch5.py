"""Wrong answers (each must be refused) and alternative correct answers (each must pass) for the
exercises of chapters 4 and 5, written as a student would from the task texts alone."""

import numpy as np
import pytest

from capslib import exercises as E
from mutation_suite import registry, run_right, run_wrong

WRONG, RIGHT, wrong, right = registry()


# =========================================================================== 4.1 û from W_rows, out-major


@wrong("4.1", "paper_layout")
def paper_layout_einsum(u, W_rows):
    return np.einsum("bie,ijed->bijd", u, W_rows)


@wrong("4.1")
def W_rows_read_as_W(u, W_rows):
    return np.einsum("bie,ijde->bjid", u, W_rows)


@wrong("4.1", "W_tiled_to_batch")
def elementwise_product_summed(u, W_rows):
    return (u[:, None, :, :, None] * W_rows.transpose(1, 0, 2, 3)[None]).sum(axis=3)


@wrong("4.1", "W_tiled_to_batch")
def repeated_W(u, W_rows):
    Wb = np.repeat(W_rows[None], u.shape[0], axis=0)
    return np.einsum("bie,bijed->bjid", u, Wb)


@wrong("4.1", "not_numpy")
def tensorflow_einsum(u, W_rows):
    import tensorflow as tf
    return tf.einsum("bie,ijed->bjid", u, W_rows).numpy()


@wrong("4.1", "input_modified")
def scales_W_in_place(u, W_rows):
    W_rows *= 1.0 + 1e-3                          # "normalising" the caller's weights
    return np.einsum("bie,ijed->bjid", u, W_rows / (1.0 + 1e-3))


@wrong("4.1")
def contracted_out_dim(u, W_rows):
    return np.einsum("bid,ijed->bjie", u, W_rows)


@wrong("4.1", "low_precision")
def half_precision(u, W_rows):
    return np.einsum("bie,ijed->bjid", u.astype(np.float16), W_rows.astype(np.float16))


@right("4.1")
def float64_einsum(u, W_rows):                    # the misnamed "W_tiled_to_batch": it is not
    return np.einsum("bie,ijed->bjid", u.astype(np.float64), W_rows.astype(np.float64))


@right("4.1")
def matmul_row_vectors(u, W_rows):
    return (u[:, None, :, None, :] @ W_rows.transpose(1, 0, 2, 3)[None])[..., 0, :]


@right("4.1")
def einsum_per_example(u, W_rows):
    return np.stack([np.einsum("ie,ijed->jid", x, W_rows) for x in u])


@right("4.1")
def optimized_einsum(u, W_rows):
    return np.einsum("bie,ijed->bjid", u, W_rows, optimize=True)


# =========================================================================== 4.2 tiled W bytes


def _caps(h, w):
    return (((h - 8) - 9) // 2 + 1) * (((w - 8) - 9) // 2 + 1) * 32


@wrong("4.2", "int32_overflow")
def int32_scalars(batch, height=28, width=28, bytes_per_number=4):
    return int(np.int32(batch) * np.int32(_caps(height, width)) * np.int32(1280) * np.int32(bytes_per_number))


@wrong("4.2")
def int32_prod(batch, height=28, width=28, bytes_per_number=4):
    return int(np.prod([batch, _caps(height, width), 10, 16, 8, bytes_per_number], dtype=np.int32))


@wrong("4.2", "wrong_type")
def in_mib(batch, height=28, width=28, bytes_per_number=4):
    return batch * _caps(height, width) * 1280 * bytes_per_number / 2**20


@wrong("4.2", "image_size_ignored")
def always_1152(batch, height=28, width=28, bytes_per_number=4):
    return batch * 1152 * 10 * 16 * 8 * bytes_per_number


@wrong("4.2", "wrong_default")
def float64_by_default(batch, height=28, width=28, bytes_per_number=8):
    return batch * _caps(height, width) * 1280 * bytes_per_number


@wrong("4.2")
def image_area_times_32(batch, height=28, width=28, bytes_per_number=4):
    return batch * height * width * 32 * 1280 * bytes_per_number // 784 * 36 // 32


@right("4.2")
def numpy_int64(batch, height=28, width=28, bytes_per_number=4):
    return int(np.prod(np.array([batch, _caps(height, width), 10, 16, 8, bytes_per_number], dtype=np.int64)))


@right("4.2")
def numpy_int64_scalar(batch, height=28, width=28, bytes_per_number=4):
    return np.prod(np.array([batch, _caps(height, width), 10, 16, 8, bytes_per_number], dtype=np.int64))


@right("4.2")
def via_capslib(batch, height=28, width=28, bytes_per_number=4):
    import keras

    import capslib
    shape = keras.layers.Conv2D(256, 9).compute_output_shape((None, height, width, 1))
    in_caps = capslib.PrimaryCaps().compute_output_shape(shape)[1]
    return batch * in_caps * 10 * 16 * 8 * bytes_per_number


# =========================================================================== 4.3 broadcasting, out-major


@wrong("4.3", "einsum_used")
def einsum_anyway(u, W):
    return np.einsum("bie,ijde->bjid", u, W)


@wrong("4.3", "einsum_used")
def einsum_for_a_detail(u, W):
    Wj = np.einsum("ijde->jide", W)                        # a transpose, written as an einsum
    return (Wj[None] @ u[:, None, :, :, None])[..., 0]


@wrong("4.3", "paper_layout")
def cell_c_copied(u, W):
    return (W[None] @ u[:, :, None, :, None])[..., 0]


@wrong("4.3", "W_tiled_to_batch")
def tiled_then_matmul(u, W):
    Wt = np.tile(W.transpose(1, 0, 2, 3)[None], (u.shape[0], 1, 1, 1, 1))
    return (Wt @ u[:, None, :, :, None])[..., 0]


@wrong("4.3", "W_tiled_to_batch")
def broadcast_to_copy(u, W):
    Wb = np.broadcast_to(W.transpose(1, 0, 2, 3)[None], (u.shape[0],) + W.transpose(1, 0, 2, 3).shape).copy()
    return (Wb @ u[:, None, :, :, None])[..., 0]


@wrong("4.3", "not_squeezed")
def column_kept(u, W):
    return W.transpose(1, 0, 2, 3)[None] @ u[:, None, :, :, None]


@wrong("4.3", "W_tiled_to_batch")
def product_and_sum(u, W):
    return (W.transpose(1, 0, 2, 3)[None] * u[:, None, :, None, :]).sum(-1)


@wrong("4.3")
def row_vectors_without_transposing_W(u, W):
    return (u[:, None, :, None, :] @ W.transpose(1, 0, 2, 3)[None])[..., 0, :]


@right("4.3")
def paper_layout_then_transposed(u, W):
    return (W[None] @ u[:, :, None, :, None])[..., 0].transpose(0, 2, 1, 3)


@right("4.3")
def matmul_without_batch_axis_on_W(u, W):
    return np.matmul(W.transpose(1, 0, 2, 3), u[:, None, :, :, None])[..., 0]


@right("4.3")
def row_vectors(u, W):
    return (u[:, None, :, None, :] @ W.transpose(1, 0, 3, 2)[None])[..., 0, :]


@wrong("4.3", "python_loop")
def loop_over_examples(u, W):                # was accepted: the task now says one @ for the whole batch
    Wj = W.transpose(1, 0, 2, 3)
    return np.stack([(Wj @ x[None, :, :, None])[..., 0] for x in u])


@wrong("4.3", "python_loop")
def tensordot_per_input_capsule(u, W):       # the review's pass: no einsum, no copy, but 1152 tensordots
    out = np.empty((u.shape[0], W.shape[1], W.shape[0], W.shape[2]), dtype=np.result_type(u, W))
    for i in range(W.shape[0]):
        out[:, :, i, :] = np.tensordot(u[:, i, :], W[i], axes=([1], [2]))
    return out


@wrong("4.3", "python_loop")
def matmul_per_output_capsule(u, W):         # the review's other pass: a comprehension over out_caps
    return np.stack([(W[:, j][None] @ u[..., None])[..., 0] for j in range(W.shape[1])], axis=1)


def _one_capsule(u, W, j):
    return (W[:, j][None] @ u[..., None])[..., 0]


@wrong("4.3", "python_loop")
def loop_through_a_helper(u, W):
    out = [_one_capsule(u, W, j) for j in range(W.shape[1])]
    return np.stack(out, axis=1)


@wrong("4.3", "python_loop")
def loop_over_in_dim(u, W):
    Wj, acc = W.transpose(1, 0, 2, 3)[None], 0.0
    for e in range(u.shape[2]):
        acc = acc + Wj[..., e] * u[:, None, :, e, None]
    return acc


def test_broadcasting_task_states_its_rules():
    task = " ".join(E.exercise("4.3").task.split())
    assert "einsum" in task and "a copy of `W` per example" in task
    assert "Python loop over the examples or the capsules" in task


@right("4.3")
def special_case_for_one_example(u, W):     # a branch is not a loop: a line or two more is fine
    Wj = W.transpose(1, 0, 2, 3)
    if u.shape[0] == 1:
        col = u[0, None, :, :, None]
        return (Wj @ col)[None, ..., 0]
    return (Wj[None] @ u[:, None, :, :, None])[..., 0]


@right("4.3")
def in_a_helper(u, W):
    return _broadcast(W.transpose(1, 0, 2, 3), u)


def _broadcast(Wj, u):
    return (Wj[None] @ u[:, None, :, :, None])[..., 0]


# =========================================================================== 4.4 every shape


def _shapes(batch, height, width, channels, num_classes=10):
    def out(n, k, s):
        return (n - k) // s + 1
    h1, w1 = out(height, 9, 1), out(width, 9, 1)
    h2, w2 = out(h1, 9, 2), out(w1, 9, 2)
    ic = h2 * w2 * 32
    return {"conv1": (batch, h1, w1, 256), "primary_conv": (batch, h2, w2, 256), "u": (batch, ic, 8),
            "W": (ic, num_classes, 16, 8), "u_hat": (batch, num_classes, ic, 16), "v": (batch, num_classes, 16),
            "masked": (batch, num_classes * 16), "reconstructions": (batch, height, width, channels)}


@wrong("4.4")
def conv1_keeps_the_channels(batch, height, width, channels, num_classes=10):
    out = _shapes(batch, height, width, channels, num_classes)
    out["conv1"] = out["conv1"][:3] + (channels,)
    return out


@wrong("4.4")
def v_per_input(batch, height, width, channels, num_classes=10):
    out = _shapes(batch, height, width, channels, num_classes)
    out["v"] = (batch, num_classes, out["u"][1], 16)
    return out


@wrong("4.4", "unknown_dim")
def batch_as_none(batch, height, width, channels, num_classes=10):
    """Keras's way to write an unknown batch, in a task where the batch is given."""
    shapes = _shapes(batch, height, width, channels, num_classes)
    return {k: v if k == "W" else (None,) + v[1:] for k, v in shapes.items()}


def test_none_as_the_batch_is_not_a_forgotten_return():
    v = E.check_capsnet_shapes(batch_as_none, quiet=True)
    text = " ".join(v.message.split())
    assert "forget" not in text and "the batch dimension is the `batch` you were passed" in text, v.message


@wrong("4.4", "wrong_type")
def missing_key(batch, height, width, channels, num_classes=10):
    out = _shapes(batch, height, width, channels, num_classes)
    del out["masked"]
    return out


@wrong("4.4", "wrong_default")
def emnist_by_default(batch, height, width, channels, num_classes=47):
    return _shapes(batch, height, width, channels, num_classes)


@wrong("4.4")
def grayscale_reconstructions(batch, height, width, channels, num_classes=10):
    out = _shapes(batch, height, width, channels, num_classes)
    out["reconstructions"] = (batch, height, width, 1)
    return out


@right("4.4")
def numpy_ints_in_shapes(batch, height, width, channels, num_classes=10):
    return {k: tuple(np.int64(d) for d in v) for k, v in _shapes(batch, height, width, channels, num_classes).items()}


@right("4.4")
def with_an_extra_key(batch, height, width, channels, num_classes=10):
    out = _shapes(batch, height, width, channels, num_classes)
    out["lengths"] = (batch, num_classes)
    return out


# =========================================================================== 5.1 one iteration, out-major


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _squash(s, axis=-1):
    n2 = np.sum(s ** 2, axis=axis, keepdims=True)
    return n2 / (1 + n2) * s / np.sqrt(n2 + 1e-9)


@wrong("5.1", "softmax_over_inputs")
def softmax_over_the_last_axis(u_hat, b):
    c = _softmax(b, -1)
    v = _squash(np.einsum("bji,bjid->bjd", c, u_hat))
    return v, b + np.einsum("bjid,bjd->bji", u_hat, v)


@wrong("5.1")
def chapter_cell_copied(u_hat, b):
    c = _softmax(b, axis=2)
    s = np.einsum("bij,bijd->bjd", c, u_hat)
    v = _squash(s)
    return v, b + np.einsum("bijd,bjd->bij", u_hat, v)


@wrong("5.1", "input_modified")
def logits_updated_in_place(u_hat, b):
    c = _softmax(b, 1)
    v = _squash(np.einsum("bji,bjid->bjd", c, u_hat))
    b += np.einsum("bjid,bjd->bji", u_hat, v)
    return v, b


@wrong("5.1", "nan_at_zero")
def naive_squash(u_hat, b):
    c = _softmax(b, 1)
    s = np.einsum("bji,bjid->bjd", c, u_hat)
    n2 = np.sum(s ** 2, axis=-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2)
    return v, b + np.einsum("bjid,bjd->bji", u_hat, v)


@wrong("5.1", "wrong_type")
def returns_a_list(u_hat, b):
    c = _softmax(b, 1)
    v = _squash(np.einsum("bji,bjid->bjd", c, u_hat))
    return [v, b + np.einsum("bjid,bjd->bji", u_hat, v)]


@wrong("5.1")
def b_new_in_paper_layout(u_hat, b):
    c = _softmax(b, 1)
    v = _squash(np.einsum("bji,bjid->bjd", c, u_hat))
    return v, (b + np.einsum("bjid,bjd->bji", u_hat, v)).transpose(0, 2, 1)


@wrong("5.1", ("not", "state_between_calls", "b_not_reset", "stale_result"))
def agreement_in_float16(u_hat, b):
    c = _softmax(b, 1)
    v = _squash(np.einsum("bji,bjid->bjd", c, u_hat))
    a = np.einsum("bjid,bjd->bji", u_hat.astype(np.float16), v.astype(np.float16))
    return v, b + a.astype(np.float32)


@right("5.1")
def via_the_paper_layout(u_hat, b):
    u = u_hat.transpose(0, 2, 1, 3)
    c = _softmax(b.transpose(0, 2, 1), 2)
    v = _squash(np.einsum("bij,bijd->bjd", c, u))
    return v, b + np.einsum("bijd,bjd->bij", u, v).transpose(0, 2, 1)


@right("5.1")
def matmuls(u_hat, b):
    c = _softmax(b, 1)
    s = (c[:, :, None, :] @ u_hat)[:, :, 0, :]
    v = _squash(s)
    return v, b + (u_hat @ v[..., None])[..., 0]


@right("5.1")
def capslib_squash_in_it(u_hat, b):
    import capslib
    c = _softmax(b, 1)
    v = np.asarray(capslib.squash(np.einsum("bji,bjid->bjd", c, u_hat).astype("float32")))
    return v, b + np.einsum("bjid,bjd->bji", u_hat, v)


# =========================================================================== 5.2 the loop, with bias


def _routing(u_hat, iterations=3, bias=None, softmax_axis=2, bias_every=True, c_keep="last", b_dtype=None):
    b = np.zeros(u_hat.shape[:3], dtype=b_dtype or np.float64)
    first_c = None
    for r in range(iterations):
        c = _softmax(b, softmax_axis)
        first_c = c if first_c is None else first_c
        s = np.einsum("bij,bijd->bjd", c, u_hat)
        if bias is not None and (bias_every or r == iterations - 1):
            s = s + bias
        v = _squash(s)
        b = b + np.einsum("bijd,bjd->bij", u_hat, v).astype(b.dtype)
    return v, (first_c if c_keep == "first" else c)


_B_GLOBAL = {}


@wrong("5.2", ("not", "stale_result"))
def logits_kept_in_a_global(u_hat, iterations=3, bias=None):
    key = u_hat.shape[:3]
    b = _B_GLOBAL.setdefault(key, np.zeros(key))
    for _ in range(iterations):
        c = _softmax(b, 2)
        s = np.einsum("bij,bijd->bjd", c, u_hat) + (0 if bias is None else bias)
        v = _squash(s)
        b += np.einsum("bijd,bjd->bij", u_hat, v)
    return v, c


@wrong("5.2")
def bias_in_the_last_iteration_only(u_hat, iterations=3, bias=None):
    return _routing(u_hat, iterations, bias, bias_every=False)


@wrong("5.2")
def couplings_of_the_first_iteration(u_hat, iterations=3, bias=None):
    return _routing(u_hat, iterations, bias, c_keep="first")


@wrong("5.2", "wrong_default")
def two_iterations_by_default(u_hat, iterations=2, bias=None):
    return _routing(u_hat, iterations, bias)


@wrong("5.2", ("not", "state_between_calls", "stale_result"))
def logits_in_float16(u_hat, iterations=3, bias=None):
    return _routing(u_hat, iterations, bias, b_dtype=np.float16)


@wrong("5.2", "wrong_type")
def returns_v_only(u_hat, iterations=3, bias=None):
    return _routing(u_hat, iterations, bias)[0]


@wrong("5.2", "input_modified")
def b_is_a_view_of_u_hat(u_hat, iterations=3, bias=None):
    b = u_hat[..., 0]                                      # a view: zeroing it zeroes part of u_hat
    b[...] = 0.0
    return _routing(u_hat, iterations, bias)


@wrong("5.2")
def bias_added_to_the_predictions(u_hat, iterations=3, bias=None):
    return _routing(u_hat + (0 if bias is None else bias[None, None]), iterations, None)


@right("5.2")
def capslib_routing(u_hat, iterations=3, bias=None):
    import capslib
    v, c = capslib.dynamic_routing(u_hat, iterations=iterations, return_coupling=True, bias=bias)
    return v, c


@right("5.2")
def out_major_inside(u_hat, iterations=3, bias=None):
    u = u_hat.transpose(0, 2, 1, 3)                        # (batch, out, in, dim)
    b = np.zeros(u.shape[:3])
    for _ in range(iterations):
        c = _softmax(b, 1)
        s = (c[:, :, None, :] @ u)[:, :, 0, :] + (0 if bias is None else bias)
        v = _squash(s)
        b = b + (u @ v[..., None])[..., 0]
    return v, c.transpose(0, 2, 1)


@right("5.2")
def last_update_skipped(u_hat, iterations=3, bias=None):
    b = np.zeros(u_hat.shape[:3])
    for r in range(iterations):
        c = _softmax(b, 2)
        s = np.einsum("bij,bijd->bjd", c, u_hat)
        v = _squash(s if bias is None else s + bias)
        if r < iterations - 1:
            b = b + np.einsum("bijd,bjd->bij", u_hat, v)
    return v, c


# =========================================================================== 5.3 coupling map, official order


@wrong("5.3", "position_major_order")
def capslib_order_map(c, j, height=6, width=6):
    return c[:, :, j].reshape(c.shape[0], height, width, 32).mean(-1)


@wrong("5.3")
def six_by_six(c, j, height=6, width=6):
    return c[:, :, j].reshape(c.shape[0], 32, 6, 6).mean(1)


@wrong("5.3", ("not", "wrong_default"))
def squeezed(c, j, height=6, width=6):
    """np.squeeze drops the batch axis at batch 1: a shape problem, not a default (the review: it was
    reported as wrong_default, the only batch-1 input being the defaults one)."""
    return np.squeeze(c[:, :, j].reshape(c.shape[0], 32, height, width).mean(axis=1))


def test_squeezed_map_is_told_its_shape():
    v = E.check_coupling_map(squeezed, quiet=True)
    text = " ".join(v.message.split())
    assert "has shape (6, 6), expected (1, 6, 6) = (batch, height, width)" in text, v.message
    assert "(batch, height, width)" in E.exercise("5.3").contract()


def test_routing_tuples_say_tensors_are_fine():
    for key in ("5.1", "5.2"):
        assert "two float arrays (NumPy, or tensors)" in E.exercise(key).contract(), key


@wrong("5.3", "wrong_default")
def eight_by_eight_default(c, j, height=8, width=8):
    return c[:, :, j].reshape(c.shape[0], 32, height, width).mean(1)


@wrong("5.3")
def mean_over_the_batch(c, j, height=6, width=6):
    m = c[:, :, j].reshape(c.shape[0], 32, height, width).mean(1)
    return np.broadcast_to(m.mean(0), m.shape)


@wrong("5.3")
def width_and_height_swapped(c, j, height=6, width=6):
    return c[:, :, j].reshape(c.shape[0], 32, width, height).mean(1)


@wrong("5.3")
def max_not_mean(c, j, height=6, width=6):
    return c[:, :, j].reshape(c.shape[0], 32, height, width).max(1)


@right("5.3")
def sum_over_32(c, j, height=6, width=6):
    return c[..., j].reshape(len(c), 32, -1).sum(1).reshape(len(c), height, width) / 32


@right("5.3")
def explicit_loop(c, j, height=6, width=6):
    out = np.zeros((c.shape[0], height, width))
    for t in range(32):
        out += c[:, t * height * width:(t + 1) * height * width, j].reshape(-1, height, width)
    return out / 32


# =========================================================================== 5.4 the port's squash


@wrong("5.4", "port_unchanged")
def the_port_squash(s):
    n = np.linalg.norm(s, axis=2, keepdims=True)
    return n * s / (1 + n ** 2)


@wrong("5.4", "layout_changed")
def returns_capslib_layout(s):
    v = s.transpose(0, 2, 1)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return n * v / (1 + n ** 2)


@wrong("5.4", "input_modified")
def in_place(s):
    n = np.linalg.norm(s, axis=1, keepdims=True)
    s *= n / (1 + n ** 2)
    return s.copy()


@wrong("5.4")
def hard_coded_layout(s):
    x = s.reshape(-1, 16, 10)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return n * x / (1 + n ** 2)


@wrong("5.4")
def norm_over_the_batch(s):
    n = np.linalg.norm(s, axis=0, keepdims=True)
    return n * s / (1 + n ** 2)


@wrong("5.4")
def gain_without_the_square(s):
    n = np.linalg.norm(s, axis=1, keepdims=True)
    return s / (1 + n)


@right("5.4")
def via_capslib(s):
    import capslib
    return capslib.squash(s, axis=1)


@right("5.4")
def transposed_twice(s):
    v = s.transpose(0, 2, 1)
    n2 = (v ** 2).sum(-1, keepdims=True)
    return (n2 / (1 + n2) * v / np.sqrt(n2 + 1e-9)).transpose(0, 2, 1)


# =========================================================================== 5.5 the port's routing, fixed


def _port(u_hat, iterations=3, per_dim=False, squash_axis=1, softmax_axis=3, keep_all_dims=False):
    b = np.zeros(u_hat.shape if (per_dim or keep_all_dims) else u_hat.shape[:2] + (1, u_hat.shape[3]))
    for _ in range(iterations):
        c = _softmax(b, softmax_axis)
        s = np.sum(c * u_hat, axis=1)
        v = _squash(s, squash_axis)
        a = u_hat * v[:, None]
        if not per_dim:
            a = a.sum(axis=2, keepdims=True)
        b = b + a
    return v


@wrong("5.5", "port_unchanged")
def port_as_given(u_hat, iterations=3):
    return _port(u_hat, iterations, per_dim=True)


@wrong("5.5")
def both_bugs(u_hat, iterations=3):
    return _port(u_hat, iterations, per_dim=True, squash_axis=2)


@wrong("5.5", "wrong_default")
def one_iteration_by_default(u_hat, iterations=1):
    return _port(u_hat, iterations)


@wrong("5.5")
def hard_coded_1152(u_hat, iterations=3):
    b = np.zeros((u_hat.shape[0], 1152, 1, u_hat.shape[3]))
    for _ in range(iterations):
        c = _softmax(b, 3)
        v = _squash(np.sum(c * u_hat, axis=1), 1)
        b = b + (u_hat * v[:, None]).sum(2, keepdims=True)
    return v


@wrong("5.5")
def mean_over_dims(u_hat, iterations=3):
    b = np.zeros(u_hat.shape[:2] + (1, u_hat.shape[3]))
    for _ in range(iterations):
        c = _softmax(b, 3)
        v = _squash(np.sum(c * u_hat, axis=1), 1)
        b = b + (u_hat * v[:, None]).mean(2, keepdims=True)
    return v


@right("5.5")
def logit_broadcast_to_every_dim(u_hat, iterations=3):       # the same logit copied to all 16 dims
    return _port(u_hat, iterations, keep_all_dims=True)


@right("5.5")
def via_the_paper_layout(u_hat, iterations=3):
    import capslib
    v = capslib.dynamic_routing(np.ascontiguousarray(u_hat.transpose(0, 1, 3, 2)), iterations=iterations)
    return np.asarray(v).transpose(0, 2, 1)


@right("5.5")
def three_dim_logits(u_hat, iterations=3):
    b = np.zeros((u_hat.shape[0], u_hat.shape[1], u_hat.shape[3]))
    for _ in range(iterations):
        c = _softmax(b, 2)[:, :, None, :]
        v = _squash(np.sum(c * u_hat, axis=1), 1)
        b = b + np.einsum("bidj,bdj->bij", u_hat, v)
    return v


# =========================================================================== the tests


@pytest.mark.parametrize("ex_id,name,fn,expect", WRONG, ids=[f"{e}-{n}" for e, n, _, _ in WRONG])
def test_wrong_answer_is_refused(ex_id, name, fn, expect):
    _B_GLOBAL.clear()
    run_wrong(ex_id, fn, expect)


@pytest.mark.parametrize("ex_id,name,fn", RIGHT, ids=[f"{e}-{n}" for e, n, _ in RIGHT])
def test_alternative_correct_answer_passes(ex_id, name, fn):
    run_right(ex_id, fn)
