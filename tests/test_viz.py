"""capslib.viz: every helper returns a Figure with the expected panels and rejects bad shapes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

import capslib  # noqa: E402
from capslib import ShapeError, viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def n_images(fig):
    return sum(isinstance(a, AxesImage) for ax in fig.axes for a in ax.get_images())


def texts(fig):
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " " + " ".join(
        ax.get_title() for ax in fig.axes)


# --------------------------------------------------------------------------- plot_history


def test_plot_history_two_epochs():
    record = {"data": "toy", "epochs": [
        {"epoch": 1, "loss": 0.5, "val_loss": 0.6, "categorical_accuracy": 0.5, "val_categorical_accuracy": 0.4},
        {"epoch": 2, "loss": 0.3, "val_loss": 0.4, "categorical_accuracy": 0.8, "val_categorical_accuracy": 0.7},
    ]}
    fig = viz.plot_history(record)
    assert isinstance(fig, Figure)
    ax_loss, ax_acc = fig.axes
    assert [len(line.get_xdata()) for line in ax_loss.lines] == [2, 2]
    np.testing.assert_allclose(ax_acc.lines[1].get_ydata(), [40.0, 70.0])
    assert ax_loss.get_title() == "loss" and ax_acc.get_title() == "accuracy"


def test_plot_history_empty():
    with pytest.raises(ValueError, match="plot_history"):
        viz.plot_history({"epochs": []})


# --------------------------------------------------------------------------- network diagram


@pytest.fixture(scope="module")
def small_net():
    """A tiny CapsNet (shapes differ from the default) so the diagram must read them, not print constants."""
    import keras
    keras.utils.set_random_seed(0)
    return capslib.CapsNet(input_shape=(20, 20, 1), conv_filters=8, primary_types=4, primary_dim=4,
                           digit_dim=6, decoder_hidden=(8, 16))


def test_network_stages_read_from_the_model(small_net):
    stages = viz.network_stages(small_net, np.zeros((3, 20, 20, 1), "float32"))
    shapes = {s["tensor"]: s["shape"] for s in stages}
    assert shapes["features"] == (3, 12, 12, 8)
    assert shapes["primary conv"] == (3, 2, 2, 16)
    assert shapes["u"] == (3, 16, 4)                      # 2·2·4 capsules of 4 dims
    assert shapes["u_hat"] == (3, 10, 16, 6)
    assert shapes["c"] == (3, 16, 10)
    assert shapes["v"] == (3, 10, 6)
    assert shapes["lengths"] == (3, 10)
    assert shapes["masked"] == (3, 60)
    assert shapes["reconstructions"] == (3, 20, 20, 1)
    assert sum(s["params"] for s in stages) == small_net.count_params()


def test_network_diagram_draws_real_shapes(small_net):
    fig = viz.network_diagram(small_net)
    assert isinstance(fig, Figure)
    text = texts(fig)
    assert "(batch, 12, 12, 8)" in text and "(batch, 16, 4)" in text
    assert f"{small_net.count_params():,} trainable parameters" in text
    assert f"{small_net.conv1.count_params():,} params" in text


def test_network_diagram_on_given_axes(small_net):
    fig, ax = plt.subplots()
    assert viz.network_diagram(small_net, ax=ax) is fig


def test_network_diagram_rejects_bad_images(small_net):
    with pytest.raises(ShapeError, match=r"network_stages.*\(batch, 20, 20, 1\)"):
        viz.network_diagram(small_net, images=np.zeros((2, 28, 28, 1), "float32"))
    with pytest.raises(TypeError, match="CapsNet"):
        viz.network_diagram(object())


# --------------------------------------------------------------------------- images and maps


@pytest.mark.parametrize("shape", [(5, 7, 9), (5, 7, 9, 1)])
def test_show_images(shape):
    fig = viz.show_images(np.random.rand(*shape), titles=list("abcde"), ncols=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5 and n_images(fig) == 5
    assert [ax.get_title() for ax in fig.axes] == list("abcde")


def test_show_images_into_given_axes():
    fig, axes = plt.subplots(1, 3)
    assert viz.show_images(np.random.rand(2, 4, 4), ax=axes) is fig
    assert n_images(fig) == 2


@pytest.mark.parametrize("shape", [(7, 9), (2, 7, 9, 3), (0, 7, 9)])
def test_show_images_rejects_bad_shapes(shape):
    with pytest.raises(ShapeError, match=r"show_images.*\(n, H, W\) or \(n, H, W, 1\)"):
        viz.show_images(np.zeros(shape))


def test_show_images_rejects_wrong_title_count():
    with pytest.raises(ValueError, match="show_images"):
        viz.show_images(np.zeros((2, 4, 4)), titles=["one"])


def test_show_feature_maps():
    fig = viz.show_feature_maps(np.random.rand(6, 6, 20), n=16, title="maps")
    assert isinstance(fig, Figure) and len(fig.axes) == 16 and n_images(fig) == 16
    assert fig.axes[3].get_title() == "ch 3"
    fig = viz.show_feature_maps(np.random.rand(1, 6, 6, 5), n=16, shared_scale=True)
    assert n_images(fig) == 5 and len(fig.axes) == 6              # 5 maps + colorbar
    fig = viz.show_feature_maps(np.random.rand(6, 6, 5), channels=[4, 0])
    assert [ax.get_title() for ax in fig.axes] == ["ch 4", "ch 0"]


def test_show_feature_maps_rejects_bad_input():
    with pytest.raises(ShapeError, match=r"show_feature_maps.*\(H, W, C\)"):
        viz.show_feature_maps(np.zeros((2, 6, 6, 4)))
    with pytest.raises(ValueError, match="show_feature_maps"):
        viz.show_feature_maps(np.zeros((6, 6, 4)), channels=[4])


# --------------------------------------------------------------------------- capsules


def test_capsule_grid_default_1152():
    lengths = np.random.rand(1152)
    fig = viz.capsule_grid(lengths)
    assert isinstance(fig, Figure) and n_images(fig) == 32 and len(fig.axes) == 33   # + colorbar
    # capsule i = (row·6 + col)·32 + t lands in panel t at (row, col)
    row, col, t = 2, 5, 7
    panel = fig.axes[t].get_images()[0].get_array()
    assert panel.shape == (6, 6)
    assert panel[row, col] == lengths[(row * 6 + col) * 32 + t]


def test_capsule_grid_small_grid_and_batch_of_one():
    fig = viz.capsule_grid(np.random.rand(1, 2 * 3 * 4), grid=(2, 3, 4), title="small")
    assert n_images(fig) == 4


@pytest.mark.parametrize("shape", [(1151,), (2, 1152), (1152, 8)])
def test_capsule_grid_rejects_bad_shapes(shape):
    with pytest.raises(ShapeError, match=r"capsule_grid.*\(1152,\)"):
        viz.capsule_grid(np.zeros(shape))


def test_plot_couplings_image():
    c = np.random.dirichlet(np.ones(10), size=1152)
    fig = viz.plot_couplings(c, title="iteration 1")
    assert isinstance(fig, Figure) and n_images(fig) == 1
    image_ax = next(ax for ax in fig.axes if ax.get_images())
    assert image_ax.get_images()[0].get_array().shape == (10, 1152)
    assert image_ax.get_title() == "iteration 1"
    assert [t.get_text() for t in image_ax.get_yticklabels()] == [str(k) for k in range(10)]


def test_plot_couplings_any_size_and_axes():
    fig, axes = plt.subplots(1, 2)
    c = np.random.dirichlet(np.ones(3), size=(1, 5))
    assert viz.plot_couplings(c, ax=axes[0], class_names=["a", "b", "c"]) is fig
    assert axes[0].get_images()[0].get_array().shape == (3, 5)


@pytest.mark.parametrize("reduce", ["mean", "max", "sum"])
def test_plot_couplings_grid(reduce):
    c = np.random.dirichlet(np.ones(10), size=1152)
    fig = viz.plot_couplings(c, grid=(6, 6, 32), reduce=reduce)
    assert n_images(fig) == 10
    want = getattr(np, reduce)(c.reshape(6, 6, 32, 10), axis=2)[:, :, 3]
    np.testing.assert_allclose(fig.axes[3].get_images()[0].get_array(), want)


def test_plot_couplings_rejects_bad_input():
    with pytest.raises(ShapeError, match=r"plot_couplings.*\(in_caps, out_caps\).*c\[0\]"):
        viz.plot_couplings(np.zeros((2, 1152, 10)))
    with pytest.raises(ShapeError, match=r"plot_couplings"):
        viz.plot_couplings(np.zeros(1152))
    with pytest.raises(ShapeError, match=r"plot_couplings.*grid"):
        viz.plot_couplings(np.zeros((1000, 10)), grid=(6, 6, 32))
    with pytest.raises(ValueError, match="plot_couplings.*class_names"):
        viz.plot_couplings(np.zeros((4, 3)), class_names=["a"])
    with pytest.raises(ValueError, match="plot_couplings.*reduce"):
        viz.plot_couplings(np.zeros((8, 2)), grid=(2, 2, 2), reduce="median")


def test_helpers_accept_tensors():
    import keras
    fig = viz.show_images(keras.ops.ones((2, 4, 4, 1)))
    assert n_images(fig) == 2


# --------------------------------------------------------------------------- what capsules learn


def test_tile_images_places_each_panel():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    m = viz.tile_images(x, pad=1)
    assert m.shape == (2 * 5 - 1, 3 * 6 - 1)
    np.testing.assert_array_equal(m[5:9, 12:17], x[1, 2])            # panel (1, 2)
    assert np.isnan(m[4]).all() and np.isnan(m[:, 5]).all()          # the gaps
    assert viz.tile_images(x[..., None], pad=0).shape == (8, 15)
    with pytest.raises(ShapeError, match="tile_images"):
        viz.tile_images(np.zeros((3, 4, 5)))


def test_perturbation_grid_labels_rows_and_columns():
    deltas = np.round(np.arange(-0.25, 0.2501, 0.05), 2)
    decoded = np.random.default_rng(0).uniform(size=(16, 11, 28, 28, 1))
    fig = viz.perturbation_grid(decoded, deltas, title="digit 3", highlight=5)
    ax = fig.axes[0]
    assert n_images(fig) == 1
    assert ax.get_images()[0].get_array().shape == (16 * 29 - 1, 11 * 29 - 1)
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["-0.25", "-0.20"]
    assert len(ax.get_yticklabels()) == 16 and ax.get_title() == "digit 3"
    with pytest.raises(ValueError, match="10 deltas for 11 columns"):
        viz.perturbation_grid(decoded, deltas[:10])
    with pytest.raises(ShapeError, match="perturbation_grid"):
        viz.perturbation_grid(decoded[0, ..., 0], deltas)


def test_reconstruction_pairs_titles_and_wrong_in_red():
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1))
    fig = viz.reconstruction_pairs(x, x * 0.5, [1, 2, 3], [1, 7, 3], ncols=2, lengths=[0.9, 0.6, 0.8])
    assert n_images(fig) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["label 1", "pred 1 |v|=0.90", "label 2", "pred 7 |v|=0.60", "label 3", "pred 3 |v|=0.80"]
    assert fig.axes[3].title.get_color() == "#d62728" and fig.axes[1].title.get_color() == "black"
    with pytest.raises(ShapeError, match="reconstruction_pairs"):
        viz.reconstruction_pairs(x, x[:2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="labels"):
        viz.reconstruction_pairs(x, x, [1, 2], [1, 2, 3])


def test_color_overlay_and_overlay_pairs():
    a = np.zeros((2, 5, 5, 1))
    b = np.zeros((2, 5, 5, 1))
    a[:, 1, 1] = 1.0
    b[:, 1, 1] = 1.0
    b[:, 3, 3] = 0.5
    rgb = viz.color_overlay(a, b)
    assert rgb.shape == (2, 5, 5, 3)
    np.testing.assert_array_equal(rgb[0, 1, 1], [1, 1, 0])           # both: yellow
    np.testing.assert_array_equal(rgb[0, 3, 3], [0, 0.5, 0])         # second only: green
    assert viz.color_overlay(a[0], b[0]).shape == (5, 5, 3)
    fig = viz.overlay_pairs(np.maximum(a, b), a, b, titles=["x", "y"])
    assert n_images(fig) == 4 and fig.axes[2].get_images()[0].get_array().shape == (5, 5, 3)   # row 2: overlays
    with pytest.raises(ShapeError, match="color_overlay"):
        viz.color_overlay(a, b[:1])
    with pytest.raises(ValueError, match="titles"):
        viz.overlay_pairs(a, a, b, titles=["x"])


def test_coupling_iterations_one_row_per_iteration():
    rng = np.random.default_rng(0)
    cs = rng.dirichlet(np.ones(10), size=(3, 1152))                  # (3, 1152, 10), rows sum to 1
    fig = viz.coupling_iterations(cs, highlight=4)
    assert n_images(fig) == 30
    assert "iteration 3" in [ax.get_ylabel() for ax in fig.axes]
    # The panel for iteration 2, output 7 is the mean over the 32 types at each 6×6 position.
    panel = fig.axes[10 + 7].get_images()[0].get_array()
    np.testing.assert_allclose(panel, cs[1].reshape(6, 6, 32, 10).mean(2)[:, :, 7])
    # One colour scale for all: every panel's clim is the same.
    assert len({ax.get_images()[0].get_clim() for ax in fig.axes if ax.get_images()}) == 1
    # deviation=True: c − 1/10 on a scale symmetric around 0.
    fig = viz.coupling_iterations(cs, deviation=True)
    panel = fig.axes[7].get_images()[0]
    np.testing.assert_allclose(panel.get_array(), cs[0].reshape(6, 6, 32, 10).mean(2)[:, :, 7] - 0.1)
    lo, hi = panel.get_clim()
    assert lo == pytest.approx(-hi) and hi > 0
    with pytest.raises(ShapeError, match="coupling_iterations"):
        viz.coupling_iterations(cs[0])
    with pytest.raises(ShapeError, match="grid"):
        viz.coupling_iterations(cs, grid=(5, 5, 32))


def test_show_images_shared_scale_and_title_colours():
    import numpy as np
    from capslib import viz
    x = np.random.default_rng(0).random((3, 5, 5))
    fig = viz.show_images(x, titles=["a", "b", "c"], vmin=0, vmax=1, title_colors=["red", "black", "red"])
    assert [a.images[0].get_clim() for a in fig.axes] == [(0, 1)] * 3
    assert fig.axes[0].title.get_color() == "red"
    fig2 = viz.show_images(x, titles=["a", "b", "c"])         # no colours given: default title colour
    assert fig2.axes[1].title.get_text() == "b"
    plt.close("all")
