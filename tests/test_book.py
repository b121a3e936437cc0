"""The book's sources: every chapter is in the TOC, stored without outputs, runs on python3, starts
with the setup cell, and the configuration gives Colab and Binder launch buttons.

The rendered HTML is checked by tests/test_book_html.py, which `make book` runs after building.
"""

import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
yaml = pytest.importorskip("yaml")


def _toc_files():
    with open(os.path.join(ROOT, "_toc.yml")) as f:
        toc = yaml.safe_load(f)
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("chapters") or e.get("sections"))
            for part in e.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


CHAPTERS = [os.path.join(ROOT, f + ".ipynb") for f in _toc_files()]


def _config():
    with open(os.path.join(ROOT, "_config.yml")) as f:
        return yaml.safe_load(f)


def test_every_toc_entry_is_a_notebook_and_every_notebook_is_in_the_toc():
    for path in CHAPTERS:
        assert os.path.exists(path), f"_toc.yml lists {path} but the notebook is missing"
    on_disk = set(glob.glob(os.path.join(ROOT, "book", "*.ipynb")))
    assert on_disk == set(CHAPTERS), f"not in _toc.yml: {sorted(on_disk - set(CHAPTERS))}"


@pytest.mark.parametrize("path", CHAPTERS, ids=os.path.basename)
def test_chapter_is_stored_without_outputs_on_python3(path):
    with open(path) as f:
        nb = json.load(f)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"]["kernelspec"].get("language", "python") == "python"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {i} of {os.path.basename(path)} has stored outputs"
            assert cell.get("execution_count") is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("path", CHAPTERS, ids=os.path.basename)
def test_chapter_starts_with_the_setup_cell(path):
    with open(path) as f:
        nb = json.load(f)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code:
        return  # a prose-only page (references) imports nothing
    first = "".join(code[0]["source"])
    # TF's C++ logs are silenced before anything can import TensorFlow.
    assert 'os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")' in first
    assert 'os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")' in first
    assert "google.colab" in first and "pip install" in first
    for c in code[1:]:
        src = "".join(c["source"])
        assert "TF_CPP_MIN_LOG_LEVEL" not in src or "import" not in src.split("TF_CPP_MIN_LOG_LEVEL")[0]


def test_config_builds_strictly_with_launch_buttons():
    cfg = _config()
    assert cfg["only_build_toc_files"] is True
    assert cfg["execute"]["execute_notebooks"] == "force"
    assert cfg["execute"]["allow_errors"] is False
    assert cfg["repository"]["url"].startswith("https://github.com/")
    assert cfg["repository"]["branch"] == "main"
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert cfg["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    ext = cfg["sphinx"]["extra_extensions"]
    assert "sphinx_exercise" in ext and "sphinx_togglebutton" in ext
    assert cfg["sphinx"]["config"]["nb_output_stderr"] == "warn"     # stderr fails a -W build
    for bib in cfg["bibtex_bibfiles"]:
        assert os.path.exists(os.path.join(ROOT, bib))


def test_every_citation_has_a_bib_entry():
    with open(os.path.join(ROOT, "book", "references.bib")) as f:
        keys = set(re.findall(r"@\w+\{([^,]+),", f.read()))
    for path in CHAPTERS:
        with open(path) as f:
            text = f.read()
        for cited in re.findall(r"\{cite[pt]?\}`([^`]+)`", text):
            for key in cited.split(","):
                assert key.strip() in keys, f"{os.path.basename(path)} cites unknown {key!r}"


def test_binder_environment_installs_the_book():
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    for needed in ("tensorflow", "keras", "jupyter-book<2", "matplotlib", "-e ."):
        assert any(needed in p for p in pip), needed


def test_mathjax_is_served_from_the_copy_make_book_unpacks():
    """No CDN: `make book` unpacks the npm package mathjax into the folder html_extra_path copies
    into the site, and mathjax_path points at it (tests/test_book_html.py checks the built site)."""
    cfg = _config()["sphinx"]["config"]
    path = cfg["mathjax_path"]
    assert not re.match(r"(https?:)?//", path), f"mathjax_path {path!r}: readers offline would see raw TeX"
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    version = re.search(r"^MATHJAX_VERSION\s*:=\s*(\d+)\.\d+\.\d+$", make, re.M)
    assert version and version.group(1) == "3", "Sphinx 7 and MyST configure MathJax 3 (mathjax3_config)"
    unpacked = re.search(r"^MATHJAX_DIR\s*:=\s*(\S+)$", make, re.M).group(1)
    served = [os.path.join(extra, "_static", os.path.dirname(path)) for extra in cfg["html_extra_path"]]
    assert unpacked in served, f"make unpacks MathJax into {unpacked}; the site gets {served}"
    assert os.path.basename(path) == "tex-mml-chtml.js" and f"package/es5/{os.path.basename(path)}" in make
    assert re.search(r"^book:.*\$\(MATHJAX_STAMP\)", make, re.M), "make book does not fetch MathJax"
