"""capslib.datasets: generated sets are seeded and reproducible; shapes, value ranges, labels and
the geometry of the affine transform are checked against independent expectations."""

import keras
import numpy as np
import pytest

from capslib import ShapeError, datasets

RNG = np.random.default_rng(0)


def fake_digits(n=40, size=28, seed=0):
    """Blob-like "digits": a random bright rectangle away from the border, labels cycling 0–9."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size, 1), np.float32)
    for k in range(n):
        r, c = rng.integers(6, 12, 2)
        h, w = rng.integers(6, 11, 2)
        x[k, r:r + h, c:c + w, 0] = rng.uniform(0.3, 1.0)
    return x, np.arange(n) % 10


def asymmetric_pattern(size=28):
    """An L-shape with a dot: no rotation or reflection maps it onto itself."""
    img = np.zeros((size, size), np.float32)
    img[5:20, 8:11] = 1.0          # vertical bar
    img[17:20, 8:20] = 0.6         # foot to the right
    img[6, 18] = 0.3               # a dot top right
    return img


# --------------------------------------------------------------------------- pad_to_canvas


def test_pad_to_canvas_centres_exactly():
    x, _ = fake_digits(5)
    out = datasets.pad_to_canvas(x, 40)
    assert out.shape == (5, 40, 40, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 6:34, 6:34], x)
    assert out.sum() == pytest.approx(x.sum())


def test_pad_to_canvas_random_placement_is_seeded_and_within_range():
    x, _ = fake_digits(30)
    a = datasets.pad_to_canvas(x, 40, max_shift=6, seed=1)
    b = datasets.pad_to_canvas(x, 40, max_shift=6, seed=1)
    c = datasets.pad_to_canvas(x, 40, max_shift=6, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Every digit is copied whole (pixel mass and values kept), and found at an offset within ±6.
    np.testing.assert_allclose(a.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=1e-6)
    for k in range(len(x)):
        found = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)
                 if np.array_equal(a[k, 6 + dy:34 + dy, 6 + dx:34 + dx], x[k])]
        assert found


def test_pad_to_canvas_rejects_bad_input():
    x, _ = fake_digits(2)
    with pytest.raises(ValueError, match="max_shift must be in 0–6"):
        datasets.pad_to_canvas(x, 40, max_shift=7, seed=0)
    with pytest.raises(ValueError, match="seed"):
        datasets.pad_to_canvas(x, 40, max_shift=2)
    with pytest.raises(ShapeError, match=r"ShapeError in pad_to_canvas \(images\)"):
        datasets.pad_to_canvas(np.zeros((2, 28, 28, 3)), 40)
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        datasets.pad_to_canvas(np.full((2, 28, 28), 255.0), 40)
    with pytest.raises(ShapeError, match="smaller"):
        datasets.pad_to_canvas(x, 20)


# --------------------------------------------------------------------------- affine_transform


def test_affine_identity_returns_the_centred_digit_exactly():
    x, _ = fake_digits(4)
    out = datasets.affine_transform(x, canvas=40)
    np.testing.assert_array_equal(out, datasets.pad_to_canvas(x, 40))


def test_affine_90_degrees_is_np_rot90():
    img = asymmetric_pattern()
    out = datasets.affine_transform(img[None], rotation_deg=90, canvas=28)[0, ..., 0]
    np.testing.assert_allclose(out, np.rot90(img), atol=1e-6)          # anticlockwise on screen
    out = datasets.affine_transform(img[None], rotation_deg=-90, canvas=28)[0, ..., 0]
    np.testing.assert_allclose(out, np.rot90(img, -1), atol=1e-6)
    out = datasets.affine_transform(img[None], rotation_deg=180, canvas=28)[0, ..., 0]
    np.testing.assert_allclose(out, np.rot90(img, 2), atol=1e-6)


def test_affine_integer_shift_moves_pixels():
    img = asymmetric_pattern()[None]
    out = datasets.affine_transform(img, shift_y=3, shift_x=-2, canvas=40)[0, ..., 0]
    np.testing.assert_array_equal(out[9:37, 4:32], img[0])


def test_affine_shear_and_scale_geometry():
    # One bright pixel at (row 20, col 13.5±0.5) of a 28×28 image: 6.5 rows below the centre.
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 20, 13:15] = 1.0
    # Shear k = 0.4: x moves by k·y = 0.4 × 6.5 = 2.6 px to the right.
    out = datasets.affine_transform(img, shear=0.4, canvas=28)[0, ..., 0]
    cols = np.arange(28)
    centre_x = (out.sum(0) * cols).sum() / out.sum()
    assert centre_x == pytest.approx(13.5 + 2.6, abs=1e-6)
    # Scale y by 2: a row 2.5 px below the centre (row 16) lands 5 px below it, spread over
    # rows 17–20 with bilinear weights 0.25, 0.75, 0.75, 0.25 — twice the mass.
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 16, 10:18] = 1.0
    out = datasets.affine_transform(img, scale_y=2.0, canvas=28)[0, ..., 0]
    np.testing.assert_allclose(out[17:21, 12], [0.25, 0.75, 0.75, 0.25], atol=1e-6)
    centre_y = (out.sum(1) * np.arange(28)).sum() / out.sum()
    assert centre_y == pytest.approx(13.5 + 5.0, abs=1e-6)


def test_affine_matrix_composition():
    a = datasets.affine_matrix(30, 0.1, 0.9, 1.1)
    th = np.deg2rad(30)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    np.testing.assert_allclose(a, rot @ np.array([[1, 0.1], [0, 1]]) @ np.diag([0.9, 1.1]))
    assert datasets.affine_matrix([0, 10], 0, 1, 1).shape == (2, 2, 2)


def test_affine_rotation_keeps_pixel_mass_roughly():
    x, _ = fake_digits(10)
    out = datasets.affine_transform(x, rotation_deg=np.linspace(-30, 30, 10), canvas=40)
    np.testing.assert_allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.05)
    # Scaling both axes by s multiplies the mass by about s².
    out = datasets.affine_transform(x, scale_x=1.2, scale_y=1.2, canvas=40)
    np.testing.assert_allclose(out.sum((1, 2, 3)), 1.44 * x.sum((1, 2, 3)), rtol=0.05)


def test_affine_transform_rejects_bad_parameters():
    x, _ = fake_digits(3)
    with pytest.raises(ShapeError, match=r"ShapeError in affine_transform \(rotation_deg\)"):
        datasets.affine_transform(x, rotation_deg=np.zeros(2))
    with pytest.raises(ValueError, match="scales must be > 0"):
        datasets.affine_transform(x, scale_x=0.0)
    with pytest.raises(ValueError, match="whole pixels"):
        datasets.affine_transform(x, shift_x=0.5)


# --------------------------------------------------------------------------- affine_mnist


def test_affine_mnist_seeded_shapes_ranges_labels():
    x, y = fake_digits(40)
    a = datasets.affine_mnist(x, y, seed=3)
    b = datasets.affine_mnist(x, y, seed=3)
    c = datasets.affine_mnist(x, y, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (40, 40, 40, 1) and a.images.dtype == np.float32
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    np.testing.assert_array_equal(a.labels, y)
    p = a.params
    assert np.all(np.abs(p["rotation_deg"]) <= 20) and np.all(np.abs(p["shear"]) <= 0.2)
    for key in ("scale_x", "scale_y"):
        assert np.all((0.8 <= p[key]) & (p[key] <= 1.2))
    assert p["rotation_deg"].std() > 5                       # spread over the range, not stuck
    # No digit was cut by the canvas: mass ≈ s_x·s_y × the original's (bilinear resampling).
    np.testing.assert_allclose(a.images.sum((1, 2, 3)), p["scale_x"] * p["scale_y"] * x.sum((1, 2, 3)), rtol=0.08)
    # Each image is exactly the transform its params describe.
    again = datasets.affine_transform(x, p["rotation_deg"], p["shear"], p["scale_x"], p["scale_y"],
                                      p["shift_y"], p["shift_x"], canvas=40)
    np.testing.assert_allclose(a.images, again, atol=1e-6)
    assert "rotation ±20°" in a.description


def test_affine_mnist_translation_limits():
    x, y = fake_digits(30)
    a = datasets.affine_mnist(x, y, seed=0, max_translation=2)
    assert np.all(np.abs(a.params["shift_y"]) <= 2) and np.all(np.abs(a.params["shift_x"]) <= 2)
    free = datasets.affine_mnist(x, y, seed=0)
    assert np.abs(free.params["shift_x"]).max() > 2                 # "significant translations"
    # Nothing touches beyond the canvas: the bounding box stays inside, so all mass is kept.
    assert free.images.sum() == pytest.approx(
        datasets.affine_transform(x, *(free.params[k] for k in ("rotation_deg", "shear", "scale_x", "scale_y")),
                                  canvas=40).sum(), rel=1e-5)


def test_affine_mnist_rejects_bad_labels():
    x, y = fake_digits(4)
    with pytest.raises(ShapeError, match=r"ShapeError in affine_mnist \(labels\)"):
        datasets.affine_mnist(x, y[:3], seed=0)
    with pytest.raises(ShapeError, match="one-hot"):
        datasets.affine_mnist(x, np.eye(10)[y], seed=0)
    with pytest.raises(ShapeError, match="0–9"):
        datasets.affine_mnist(x, y + 10, seed=0)


# --------------------------------------------------------------------------- multi_mnist


def test_multi_mnist_shapes_labels_and_reproducibility():
    x, y = fake_digits(50)
    m = datasets.multi_mnist(x, y, 64, seed=5)
    again = datasets.multi_mnist(x, y, 64, seed=5)
    other = datasets.multi_mnist(x, y, 64, seed=6)
    for a, b in zip(m[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(m.images, other.images)
    assert m.images.shape == (64, 36, 36, 1) and m.images.dtype == np.float32
    assert m.digits.shape == (64, 2, 36, 36, 1) and m.labels.shape == (64, 2) and m.two_hot.shape == (64, 10)
    assert 0.0 <= m.images.min() and m.images.max() <= 1.0
    assert np.all(m.labels[:, 0] != m.labels[:, 1])                       # different classes
    np.testing.assert_array_equal(m.two_hot.sum(1), 2.0)
    np.testing.assert_array_equal(np.sort(np.flatnonzero(m.two_hot[0])), np.sort(m.labels[0]))
    np.testing.assert_array_equal(m.images, np.clip(m.digits.sum(1), 0, 1))  # the overlay of the two
    # Each separate digit is a whole source digit of its class, shifted by at most ±4 px.
    for k in range(8):
        for j in range(2):
            d = m.digits[k, j, ..., 0]
            candidates = [i for i in np.flatnonzero(y == m.labels[k, j])
                          if any(np.array_equal(d[4 + dy:32 + dy, 4 + dx:32 + dx], x[i, ..., 0])
                                 for dy in range(-4, 5) for dx in range(-4, 5))]
            assert candidates and d.sum() == pytest.approx(x[candidates[0]].sum(), rel=1e-6)


def test_multi_mnist_class_balance_and_max_combine():
    x, y = fake_digits(100)
    m = datasets.multi_mnist(x, y, 2000, seed=0, combine="max")
    np.testing.assert_array_equal(m.images, m.digits.max(1))
    counts = np.bincount(m.labels[:, 1], minlength=10)
    assert counts.min() > 120                           # the second class is spread over all ten
    pairs = {(a, b) for a, b in m.labels}
    assert all(a != b for a, b in pairs) and len(pairs) == 90


def test_multi_mnist_rejects_bad_input():
    x, y = fake_digits(10)
    with pytest.raises(ShapeError, match=r"ShapeError in multi_mnist \(labels\).*two classes"):
        datasets.multi_mnist(x, np.zeros(10, int), 5, seed=0)
    with pytest.raises(ShapeError, match=r"ShapeError in multi_mnist \(images\)"):
        datasets.multi_mnist(x[..., 0][..., None, None], y, 5, seed=0)
    with pytest.raises(ValueError, match="combine"):
        datasets.multi_mnist(x, y, 5, seed=0, combine="mean")


def test_two_digit_accuracy():
    lengths = np.full((3, 10), 0.05)
    lengths[0, [2, 7]] = 0.9            # right (either order)
    lengths[1, [1, 4]] = 0.8            # one right, one wrong
    lengths[2, [3, 5]] = 0.7            # right
    labels = np.array([[7, 2], [1, 5], [3, 5]])
    assert datasets.two_digit_accuracy(lengths, labels) == pytest.approx(2 / 3)
    with pytest.raises(ShapeError, match="two_digit_accuracy"):
        datasets.two_digit_accuracy(lengths, labels[:, 0])


# --------------------------------------------------------------------------- MultiDigitCapsNet


@pytest.fixture(scope="module")
def tiny_multi():
    keras.utils.set_random_seed(0)
    model = datasets.MultiDigitCapsNet(input_shape=(20, 20, 1), conv_filters=8, primary_types=4, primary_dim=4,
                                       digit_dim=6, decoder_hidden=(8, 16))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_multi_digit_loss_is_margin_plus_two_masked_reconstructions(tiny_multi):
    model = tiny_multi
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 20, 20, 1)).astype("float32")
    pair = np.array([[1, 2], [3, 4], [0, 9], [5, 6]])
    onehot = np.eye(10, dtype="float32")[pair]                       # (4, 2, 10)
    digits = rng.uniform(size=(4, 2, 20, 20, 1)).astype("float32")
    y_pred = model(x)
    loss = float(model.compute_loss(x, (onehot, digits), y_pred))
    v = model.encode(x)
    lengths = keras.ops.convert_to_numpy(model.length(v))
    import capslib
    expected = float(capslib.margin_loss(onehot.sum(1), lengths))
    for k in range(2):
        recon = model.decode(v, onehot[:, k])
        expected += float(capslib.reconstruction_loss(digits[:, k], recon))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_multi_digit_fit_runs_and_rejects_one_hot_labels(tiny_multi):
    model = tiny_multi
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(8, 20, 20, 1)).astype("float32")
    onehot = np.eye(10, dtype="float32")[rng.integers(0, 10, (8, 2))]
    digits = rng.uniform(size=(8, 2, 20, 20, 1)).astype("float32")
    history = model.fit(x, (onehot, digits), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.lengths_of(x, batch_size=3).shape == (8, 10)
    with pytest.raises(ShapeError, match="labels_onehot"):
        model.compute_loss(x, (onehot.sum(1), digits), model(x))
