"""CapsNet as a keras.Model: predict, compile/fit on a tiny learnable set, the loss that fit and
evaluate use, and a hand-written tf.GradientTape training loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import capslib
from capslib import ShapeError, margin_loss, reconstruction_loss


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def compiled(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    m = capslib.CapsNet(**kwargs)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=margin_loss, metrics=["categorical_accuracy"])
    return m


def test_toy_dataset_is_what_the_tests_assume(toy_data):
    x, y = toy_data
    assert x.shape == (64, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (64, 10) and (y.sum(axis=1) == 1).all()
    assert (y.sum(axis=0) >= 6).all()
    # every class has its own image (the task is learnable)
    means = np.stack([x[y[:, k] == 1].mean(axis=0) for k in range(10)])
    assert min(np.abs(means[a] - means[b]).max() for a in range(10) for b in range(a)) > 0.5


def test_predict_returns_lengths_and_reconstructions(model, rng):
    x = rng.uniform(0, 1, (5, 28, 28, 1)).astype("float32")
    lengths, recon = model.predict(x, batch_size=5, verbose=0)
    assert lengths.shape == (5, 10) and recon.shape == (5, 28, 28, 1)
    # call reconstructs from the longest capsule
    v = model.encode(x)
    np.testing.assert_allclose(recon, to_np(model.decode(v)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lengths, to_np(capslib.capsule_length(v)), rtol=1e-5, atol=1e-7)
    # capsule_length is sqrt(|v|² + 1e-9): the Euclidean length to within ~3e-5
    np.testing.assert_allclose(lengths, np.linalg.norm(to_np(v), axis=-1), rtol=1e-4, atol=4e-5)


def _official_margin_loss_by_hand(labels, lengths):
    # The official code's layers._margin_loss (margin 0.4 around 0.5, downweight 0.5), then
    # layers.evaluate's reduce_mean over the batch AND the classes, written out in float64.
    logits = lengths.astype(np.float64) - 0.5
    positive = labels * (logits < 0.4) * (logits - 0.4) ** 2
    negative = (1 - labels) * (logits > -0.4) * (logits + 0.4) ** 2
    return float(np.mean(0.5 * positive + 0.5 * 0.5 * negative))


def test_official_loss_balance_is_the_official_codes_loss(toy_data):
    x, y = toy_data
    x, y = x[:12], np.roll(y[:12], 3, axis=1)
    m = compiled(seed=5, loss_balance="official")
    result = m.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    v = m.encode(x)
    lengths = to_np(m.length(v)).astype(np.float64)
    recon = float(to_np(reconstruction_loss(x, m.decode(v, y))))     # 0.0005 × per-image sum, batch mean
    official = _official_margin_loss_by_hand(y, lengths)
    assert result["loss"] == pytest.approx(official + recon, rel=1e-5, abs=1e-6)
    # … which is Eq. 4's per-example sum divided by 2 × classes: the paper's balance would differ.
    assert official == pytest.approx(float(to_np(margin_loss(y, lengths))) / 20, rel=1e-6)
    paper = compiled(seed=5).evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["loss"]
    assert paper == pytest.approx(20 * official + recon, rel=1e-5, abs=1e-6)


def test_fit_learns_the_toy_set(toy_data):
    x, y = toy_data
    m = compiled(seed=0)
    history = m.fit(x, y, batch_size=16, epochs=5, shuffle=True, verbose=0).history
    losses, acc = history["loss"], history["categorical_accuracy"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert max(acc) >= 0.5 and acc[-1] > 0.3, acc            # chance is 0.1
    lengths, _ = m.predict(x, verbose=0)
    assert (lengths.argmax(axis=1) == y.argmax(axis=1)).mean() >= 0.5


@pytest.mark.parametrize("sensitive", [False, True], ids=["as-built", "long-capsules"])
def test_evaluate_loss_is_margin_plus_reconstruction(toy_data, sensitive):
    x, y = toy_data
    x, y = x[:12], y[:12]
    # labels that are not the longest capsule for most images, so that decoding the true class
    # and decoding the longest capsule differ
    y = np.roll(y, 3, axis=1)
    m = compiled(seed=5, init="keras", use_bias=False)
    if sensitive:
        # with W ~ TN(0.01) the capsules are ~1e-6 long and every decoding looks the same: make
        # them long (s is linear in W) and the decoder sensitive to which capsule it is fed
        m.digit_caps.W.assign(m.digit_caps.W * 500.0)
        m.decoder.dense[0].kernel.assign(m.decoder.dense[0].kernel * 50.0)
    result = m.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)

    v = m.encode(x)
    lengths = m.length(v)
    margin = float(to_np(margin_loss(y, lengths)))
    by_hand = margin + float(to_np(reconstruction_loss(x, m.decode(v, y))))
    assert result["loss"] == pytest.approx(by_hand, abs=1e-5, rel=1e-5)
    assert abs(margin - by_hand) > 1e-3                      # the reconstruction term is in there
    if sensitive:
        assert to_np(lengths).max() > 0.05
        # decoded from the true class's capsule, not the longest one
        longest = margin + float(to_np(reconstruction_loss(x, m.decode(v))))
        assert abs(longest - by_hand) > 1e-3, (longest, by_hand)
    # metrics read the lengths
    acc = (to_np(lengths).argmax(axis=1) == y.argmax(axis=1)).mean()
    assert result["categorical_accuracy"] == pytest.approx(acc)


def test_reconstruction_weight_is_used(toy_data):
    x, y = toy_data
    x, y = x[:8], y[:8]
    losses = {}
    for w in (0.0005, 0.0):
        m = compiled(seed=5, reconstruction_weight=w)
        losses[w] = m.evaluate(x, y, batch_size=8, verbose=0)[0]
    v = m.encode(x)
    assert losses[0.0] == pytest.approx(float(to_np(margin_loss(y, m.length(v)))), abs=1e-5)
    assert losses[0.0005] > losses[0.0] + 1e-3


def test_fit_rejects_integer_labels(toy_data):
    x, y = toy_data
    m = compiled()
    with pytest.raises(ShapeError, match="one-hot"):
        m.fit(x[:4], y[:4].argmax(axis=1), batch_size=4, epochs=1, verbose=0)


def test_fit_rejects_uint8_images(toy_data):
    x, y = toy_data
    m = compiled()
    with pytest.raises(ShapeError, match=r"ShapeError in CapsNet \(images\): expected a float tensor"):
        m.fit((x[:4] * 255).astype("uint8"), y[:4], batch_size=4, epochs=1, verbose=0)


def test_gradient_tape_training_loop(toy_data):
    """A hand-written TF training step: encode → lengths → margin + reconstruction → Adam."""
    x, y = toy_data
    keras.utils.set_random_seed(0)
    m = capslib.CapsNet()
    optimizer = keras.optimizers.Adam(1e-3)

    def loss_fn(images, labels):
        v = m.encode(images)
        lengths = capslib.capsule_length(v)
        return margin_loss(labels, lengths) + reconstruction_loss(images, m.decode(v, labels))

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(images, labels)
        grads = tape.gradient(loss, m.trainable_variables)
        optimizer.apply_gradients(zip(grads, m.trainable_variables))
        return loss, grads

    before = float(loss_fn(x, y))
    rng = np.random.default_rng(0)
    for epoch in range(3):
        for idx in np.array_split(rng.permutation(len(x)), 4):
            loss, grads = train_step(tf.constant(x[idx]), tf.constant(y[idx]))
            assert np.isfinite(float(loss))
    # every variable gets a gradient (nothing is cut off from the loss)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    after = float(loss_fn(x, y))
    assert after < 0.8 * before, (before, after)


def test_entry_points_check_images_even_after_keras_relaxes_traced_shapes():
    """After a few batch sizes, Keras retraces predict with relaxed (unknown) dims, where the
    static checks inside call() can't see a wrong size; fit/evaluate/predict check at the door."""
    import capslib
    from capslib import ShapeError
    model = capslib.CapsNet()
    for n in (3, 5, 7):
        model.predict(np.zeros((n, 28, 28, 1), np.float32), verbose=0)
    y = np.eye(10, dtype=np.float32)[:4]
    model.compile(optimizer="adam", loss=capslib.margin_loss)
    bad = np.zeros((4, 28, 28, 3), np.float32)
    for call in (lambda: model.predict(bad, verbose=0), lambda: model.evaluate(bad, y, verbose=0),
                 lambda: model.fit(bad, y, verbose=0)):
        with pytest.raises(ShapeError, match=r"ShapeError in CapsNet \(images\).*dim 3 \(channels\) differs"):
            call()


def test_entry_points_refuse_nan_and_unscaled_pixels_and_sample_weights():
    import capslib
    from capslib import ShapeError
    model = capslib.CapsNet()
    model.compile(optimizer="adam", loss=capslib.margin_loss)
    y = np.eye(10, dtype=np.float32)[:2]
    x = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(ShapeError, match="NaN or inf"):
        model.predict(np.full_like(x, np.nan), verbose=0)
    unscaled = x.copy()
    unscaled[0, 3, 3, 0] = 255.0                                # astype("float32") without / 255
    with pytest.raises(ShapeError, match=r"pixels range over \[0, 255\].*divide 0–255 images by 255"):
        model.fit(unscaled, y, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(x, y, sample_weight=np.ones(2, np.float32), verbose=0)


def test_primary_caps_names_itself_on_wrong_rank():
    import capslib
    from capslib import ShapeError
    with pytest.raises(ShapeError, match=r"ShapeError in primary_caps \(conv1 features\): expected rank 4"):
        capslib.PrimaryCaps(name="primary_caps")(np.zeros((2, 20, 256), np.float32))
