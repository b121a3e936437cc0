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


# --------------------------------------------------------------------------- MathJax, served with the book

MATHJAX = os.path.join(HTML, "_static", "mathjax")
MATHJAX_SCRIPT = os.path.join(MATHJAX, "tex-mml-chtml.js")
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"")
STYLESHEET = re.compile(r"<link\b[^>]*\brel=\"stylesheet\"[^>]*\bhref=\"([^\"]+)\"")
REMOTE = re.compile(r"^(https?:)?//")
MATHJAX_CDN = re.compile(r"(cdn\.jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com)[^\"' ]*mathjax|mathjax@\d", re.I)
MATH_ELEMENT = 'class="math notranslate nohighlight"'


def _mathjax_version():
    with open(os.path.join(ROOT, "Makefile")) as f:
        return re.search(r"^MATHJAX_VERSION\s*:=\s*(\S+)", f.read(), re.M).group(1)


def _site_pages():
    """Every page of the site (the theme's and MathJax's own files under _static excluded)."""
    pages = []
    for dirpath, dirnames, filenames in os.walk(HTML):
        dirnames[:] = [d for d in dirnames if d not in ("_static", "_sources", "_images")]
        pages += [os.path.join(dirpath, f) for f in filenames if f.endswith(".html")]
    assert pages, "no pages in _build/html"
    return sorted(pages)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_every_page_with_maths_loads_the_mathjax_copy_in_the_site():
    path = _config()["sphinx"]["config"]["mathjax_path"]
    assert not REMOTE.match(path), f"mathjax_path {path!r} is a URL: readers offline would see raw TeX"
    assert os.path.isfile(MATHJAX_SCRIPT), "no _static/mathjax/tex-mml-chtml.js in the site (make mathjax)"
    with_maths = []
    for page in _site_pages():
        html, name = _read(page), os.path.relpath(page, HTML)
        scripts = [s for s in SCRIPT_SRC.findall(html) if "mathjax" in s.lower() or "tex-mml" in s]
        if MATH_ELEMENT in html:
            with_maths.append(name)
            assert len(scripts) == 1, f"{name} has maths and {len(scripts)} MathJax scripts: {scripts}"
        for src in scripts:
            assert not REMOTE.match(src), f"{name} loads MathJax from {src}"
            target = os.path.normpath(os.path.join(os.path.dirname(page), src.split("?")[0]))
            assert target == MATHJAX_SCRIPT, f"{name} loads MathJax from {target}, not {MATHJAX_SCRIPT}"
    assert with_maths, "no page has maths, so nothing above was checked"


def test_no_page_loads_mathjax_or_anything_else_from_the_network():
    for page in _site_pages():
        html, name = _read(page), os.path.relpath(page, HTML)
        m = MATHJAX_CDN.search(html)
        assert m is None, f"{name} refers to a MathJax CDN: {m.group(0)!r}"
        remote = [u for u in SCRIPT_SRC.findall(html) + STYLESHEET.findall(html) if REMOTE.match(u)]
        assert not remote, f"{name} loads {remote} from the network"


def test_mathjax_copy_holds_what_it_loads_on_demand():
    """tex-mml-chtml.js fetches these only when a page needs them: fonts, TeX extensions that
    autoload (\\cancel, \\ce, ...), and the menu's accessibility, speech and SVG-output parts."""
    with open(MATHJAX_SCRIPT, encoding="utf-8") as f:
        assert f'VERSION="{_mathjax_version()}"' in f.read(), "the copy is not the Makefile's MATHJAX_VERSION"
    fonts = [f for f in os.listdir(os.path.join(MATHJAX, "output", "chtml", "fonts", "woff-v2")) if f.endswith(".woff")]
    assert len(fonts) == 23 and "MathJax_Main-Regular.woff" in fonts, sorted(fonts)
    for needed in ("input/tex/extensions/cancel.js", "input/tex/extensions/mhchem.js", "a11y/explorer.js",
                   "a11y/semantic-enrich.js", "a11y/sre.js", "sre/mathmaps/en.json", "ui/lazy.js",
                   "output/svg.js", "LICENSE"):
        assert os.path.isfile(os.path.join(MATHJAX, needed)), f"_static/mathjax/{needed} is missing"
