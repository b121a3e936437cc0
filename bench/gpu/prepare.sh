#!/usr/bin/env bash
# Run HERE (a machine with the package registries) before a GPU session: gathers what the GPU
# machine lacks into two git-ignored folders that `device run` can carry:
#   .whl/      keras and the two dependencies missing there, as wheels for its Python 3.12
#   .devdata/  Fashion-MNIST's IDX .gz files (Debian's dataset-fashion-mnist), ~30 MB
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
KERAS_VERSION=$(.venv/bin/python -c "import keras; print(keras.__version__)")
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  "keras==${KERAS_VERSION}" namex optree
mkdir -p .devdata/fashion-mnist /tmp/fmnist-deb
if [ ! -f .devdata/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  (cd /tmp/fmnist-deb && apt-get download dataset-fashion-mnist >/dev/null && dpkg -x dataset-fashion-mnist_*.deb x)
  cp /tmp/fmnist-deb/x/usr/share/datasets/fashion-mnist/*.gz .devdata/fashion-mnist/
fi
ls -la .whl .devdata/fashion-mnist
du -sh .whl .devdata
