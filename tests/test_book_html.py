"""The rendered book, as a reader sees it. `make book` runs this right after building.

Skipped when there is no build (plain `make test`), unless CAPSBOOK_REQUIRE_HTML=1 (set by
`make book`), where a missing page is a failure.
"""

import os
import re

import pytest

from test_book import CHAPTERS, ROOT, _config

HTML = os.path.join(ROOT, "_build", "html")
if not os.path.isdir(HTML) and not os.environ.get("CAPSBOOK_REQUIRE_HTML"):
    pytest.skip("no built book in _build/html (run make book)", allow_module_level=True)

# Chapters whose pages are prose only (no figure expected).
NO_FIGURES = {"references", "exercises"}
TF_LOG = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |\b[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+|"
                    r"oneDNN custom operations|This TensorFlow binary is optimized|"
                    r"WARNING: All log messages before absl)")


def _page(chapter):
    name = os.path.relpath(chapter, ROOT)[: -len(".ipynb")]
    path = os.path.join(HTML, name + ".html")
    assert os.path.exists(path), f"{name}.html was not built"
    with open(path, encoding="utf-8") as f:
        return name, f.read()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=os.path.basename)
def test_page_has_no_traceback_or_tensorflow_logs(chapter):
    name, html = _page(chapter)
    assert "Traceback" not in html, f"{name}: a traceback reached the page"
    m = TF_LOG.search(html)
    assert m is None, f"{name}: TensorFlow log line on the page: {m.group(0)!r}"
    assert "stderr" not in re.findall(r'class="[^"]*output[^"]*"', html).__str__()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=os.path.basename)
def test_page_has_its_figures(chapter):
    name, html = _page(chapter)
    if os.path.basename(name) in NO_FIGURES:
        return
    figures = re.findall(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', html)
    assert figures, f"{name}: no figure rendered"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=os.path.basename)
def test_page_launches_its_notebook_on_colab_and_binder(chapter):
    name, html = _page(chapter)
    cfg = _config()
    repo = cfg["repository"]["url"].removeprefix("https://github.com/")
    branch = cfg["repository"]["branch"]
    colab = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{name}.ipynb"
    binder = f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=tree/{name}.ipynb"
    assert colab in html, f"{name}: no Colab link {colab}"
    assert binder in html, f"{name}: no Binder link {binder}"


def test_pages_that_train_say_which_mode_produced_them():
    for chapter in CHAPTERS:
        with open(chapter) as f:
            source = f.read()
        if "book_model(" in source or ".fit(" in source:
            name, html = _page(chapter)
            assert re.search(r"(quick|full) mode", html), f"{name} trains but shows no mode note"
