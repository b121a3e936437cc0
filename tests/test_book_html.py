"""The rendered book, as a reader sees it. `make book` runs this right after building.

Skipped when there is no build (plain `make test`), unless CAPSBOOK_REQUIRE_HTML=1 (set by
`make book`), where a missing page is a failure.

The tests at the end open the pages in headless Chromium, with every host name unresolvable (so
offline), at 1280 px: the maths is typeset by the MathJax copy served with the book, and nothing
is clipped. They are skipped where no Chromium is installed, unless CAPSBOOK_REQUIRE_CHROMIUM=1
(set by .ci/run), where that is a failure.
"""

import functools
import html as html_lib
import json
import os
import re
import shutil
import subprocess
import tempfile

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


def test_pages_say_which_model_or_run_produced_their_outputs():
    # A page that shows a trained model names it (a reference model with its record, or this
    # build's model); a page that trains live says which mode, data and machine.
    quick = os.environ.get("CAPSBOOK_QUICK", "") not in ("", "0") or os.environ.get("CAPSBOOK_MODE") == "quick"
    for chapter in CHAPTERS:
        with open(chapter) as f:
            source = f.read()
        if not any(k in source for k in ("book_model(", "pretrained.load(", ".fit(")):
            continue
        name, html = _page(chapter)
        assert re.search(r"(quick|full) mode|reference model|trained by this build", html), \
            f"{name} shows a trained model but does not say which"
        if quick and "book_model(" in source:
            assert "reference model <code" in html or "reference model `mnist`" in html, \
                f"{name}: in quick mode the shared model is the reference model `mnist`, and the page must say so"


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


# --------------------------------------------------------------------------- in headless Chromium

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
WIDTH, HEIGHT = 1280, 900

# Added to a copy of a page: once MathJax has typeset and the fonts are in, it records what a reader
# would see, scrolls every box that scrolls sideways to its right end, and records that box again.
PROBE = r"""
<script>
(function () {
  function name(e) {
    return e.tagName.toLowerCase() + (typeof e.className === "string" && e.className.trim()
                                      ? "." + e.className.trim().split(/\s+/).join(".") : "");
  }
  function px(v) { return parseFloat(v) || 0; }
  function probe() {
    var art = document.querySelector("article.bd-article"), ar = art.getBoundingClientRect();
    var out = {mathjax: window.MathJax && MathJax.version, mjx: document.querySelectorAll("mjx-container").length,
               merror: document.querySelectorAll("mjx-merror").length, fonts: [], boxes: [], clipped: [],
               spilling: [], untypeset: 0, tables: {}};
    document.querySelectorAll(".math.notranslate").forEach(function (m) {
      if (!m.querySelector("mjx-container")) out.untypeset += 1;
    });
    document.fonts.forEach(function (f) { out.fonts.push([f.family, f.status]); });
    var boxes = [];
    art.querySelectorAll("*").forEach(function (e) {
      if (e.closest("mjx-assistive-mml")) return;                  // MathJax's screen-reader copy
      var cs = getComputedStyle(e), r = e.getBoundingClientRect();
      if (cs.display === "none" || r.width === 0) return;
      var wider = e.scrollWidth > e.clientWidth + 1;
      if (wider && (cs.overflowX === "auto" || cs.overflowX === "scroll")) boxes.push(e);
      if (wider && (cs.overflowX === "hidden" || cs.overflowX === "clip")) {   // clipped, if drawn content sticks out
        var worst = 0;
        e.querySelectorAll("*").forEach(function (d) {
          var dr = d.getBoundingClientRect();
          if (!d.closest("mjx-assistive-mml") && dr.width > 0) worst = Math.max(worst, dr.right - r.right, r.left - dr.left);
        });
        if (worst > 1) out.clipped.push([name(e), Math.round(worst)]);
      }
      if (r.right > ar.right + 1 || r.left < ar.left - 1) {           // outside the text column, not in a scroll box
        for (var p = e.parentElement; p && p !== art; p = p.parentElement)
          if (getComputedStyle(p).overflowX !== "visible") return;
        out.spilling.push([name(e), Math.round(r.right - ar.right)]);
      }
    });
    boxes.forEach(function (b) {
      var cs = getComputedStyle(b), r = b.getBoundingClientRect();
      out.boxes.push({what: name(b), id: b.id, width: b.clientWidth, content: b.scrollWidth, height: Math.round(r.height),
                      scrollbar: Math.round(b.offsetHeight - b.clientHeight - px(cs.borderTopWidth) - px(cs.borderBottomWidth)),
                      mask: (cs.maskImage || cs.webkitMaskImage || "none") !== "none",
                      fadeRight: cs.getPropertyValue("--capsbook-fade-right").trim()});
    });
    document.querySelectorAll(".capsbook-probe table").forEach(function (t) {
      var box = t.parentElement, lines = 0;
      t.querySelectorAll("th").forEach(function (th) {
        var cs = getComputedStyle(th);
        lines = Math.max(lines, Math.round((th.clientHeight - px(cs.paddingTop) - px(cs.paddingBottom)) / px(cs.lineHeight)));
      });
      out.tables[t.id] = {box: name(box), width: t.offsetWidth, boxWidth: box.clientWidth, headerLines: lines,
                          boxHeight: Math.round(box.getBoundingClientRect().height)};
    });
    // Scroll every box to its right end and read it again. The scroll event is sent by hand:
    // headless Chromium under a virtual time budget may not deliver it in time.
    boxes.forEach(function (b, i) {
      b.scrollLeft = b.scrollWidth;
      b.dispatchEvent(new Event("scroll"));
      out.boxes[i].atEnd = name(b);
      out.boxes[i].fadeRightAtEnd = getComputedStyle(b).getPropertyValue("--capsbook-fade-right").trim();
    });
    var pre = document.createElement("pre");
    pre.id = "capsbook-probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var ready = window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
    ready.then(function () { return document.fonts.ready; }).then(function () { setTimeout(probe, 500); });
  });
})();
</script>
"""


@pytest.fixture(scope="module")
def browser():
    """probe(page, insert=""): what headless Chromium shows of `page` (relative to _build/html)
    at 1280 px with the network unreachable; `insert` is HTML put at the top of the page's text."""
    if CHROMIUM is None:
        if os.environ.get("CAPSBOOK_REQUIRE_CHROMIUM"):
            pytest.fail("CAPSBOOK_REQUIRE_CHROMIUM=1 but no chromium on the PATH (apt-get install chromium)")
        pytest.skip("no chromium on the PATH (apt-get install chromium)")
    site = os.path.join(tempfile.mkdtemp(prefix="capsbook-site-"), "html")
    shutil.copytree(HTML, site)                        # probes are written next to the pages, not into _build

    @functools.lru_cache(maxsize=None)
    def probe(page, insert=""):
        html = _read(os.path.join(site, page))
        if insert:
            html = html.replace('<article class="bd-article">', '<article class="bd-article">' + insert, 1)
        path = os.path.join(site, os.path.dirname(page), "_capsbook_probe.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write(html.replace("</body>", PROBE + "</body>", 1))
        run = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=30000", "--dump-dom", "file://" + path],
            capture_output=True, text=True, timeout=180)
        m = re.search(r'<pre id="capsbook-probe">(.*?)</pre>', run.stdout, re.S)
        assert m, f"{page}: the probe never reported (chromium exit {run.returncode}): {run.stderr[-1000:]}"
        return json.loads(html_lib.unescape(m.group(1)))

    yield probe
    shutil.rmtree(os.path.dirname(site), ignore_errors=True)


def _chapter_page(chapter):
    return os.path.relpath(chapter, ROOT)[: -len(".ipynb")] + ".html"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=os.path.basename)
def test_chromium_typesets_every_formula_offline(browser, chapter):
    page = _chapter_page(chapter)
    n_math = _read(os.path.join(HTML, page)).count(MATH_ELEMENT)
    seen = browser(page)
    if n_math == 0:
        return
    assert seen["mathjax"] == _mathjax_version(), f"{page}: MathJax {seen['mathjax']} ran"
    assert seen["untypeset"] == 0, f"{page}: {seen['untypeset']} of {n_math} formulas left as raw TeX"
    assert seen["mjx"] >= n_math and seen["merror"] == 0, seen
    mathjax_fonts = [status for family, status in seen["fonts"] if family.startswith("MJX")]
    assert "loaded" in mathjax_fonts, f"{page}: no MathJax font loaded: {seen['fonts']}"
    assert "error" not in mathjax_fonts, f"{page}: a MathJax font failed to load: {seen['fonts']}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=os.path.basename)
def test_at_1280px_nothing_is_clipped_and_what_is_wider_scrolls_visibly(browser, chapter):
    page = _chapter_page(chapter)
    seen = browser(page)
    assert not seen["clipped"], f"{page}: content cut off by overflow: hidden: {seen['clipped']}"
    assert not seen["spilling"], f"{page}: content runs out of the text column: {seen['spilling']}"
    for box in seen["boxes"]:                          # code, outputs, tables, equations wider than the page
        assert box["scrollbar"] >= 8, f"{page}: {box['what']} scrolls without a drawn scrollbar: {box}"
        assert "capsbook-overflow" in box["what"] and box["mask"], f"{page}: no fade at the hidden edge: {box}"
        # scrolled to the right end: marked so, the right edge no longer fades, the left one does
        assert "capsbook-at-end" in box["atEnd"] and "capsbook-scrolled" in box["atEnd"], f"{page}: {box}"
        assert box["fadeRight"] != "0px" and box["fadeRightAtEnd"] == "0px", f"{page}: fade does not follow scrolling: {box}"
        if "pst-scrollable-table-container" in box["what"]:   # a table: smaller type, a box shorter than the window
            assert "capsbook-compact" in box["what"] and box["height"] <= 0.85 * HEIGHT + 1, f"{page}: {box}"
            # squeezed, it may hide at most a fifth of itself; else it is laid out at natural width
            assert "capsbook-wide" in box["what"] or box["content"] <= 1.25 * box["width"] + 1, f"{page}: {box}"


WIDE_CELL = ("Cannot convert a tensor of shape (128,) to one-hot inside the loss: expected (batch, 10), got "
             "(batch,) for node margin_loss/one_hot with input shapes [128], [], [], []")
PROSE_CELL = "a sentence long enough that the column it sits in has to wrap it over a few lines of the page"


def _table(table_id, header, row):
    """A table as MyST renders a markdown table, in a cell or displayed by one."""
    th = "".join(f'<th class="head"><p>{h}</p></th>' for h in header)
    td = "".join(f"<td><p>{c}</p></td>" for c in row)
    return (f'<div class="pst-scrollable-table-container"><table class="table" id="{table_id}"><thead><tr class="row-odd">'
            f"{th}</tr></thead><tbody>" + f'<tr class="row-even">{td}</tr>' * 6 + "</tbody></table></div>")


def test_a_ten_column_table_scrolls_at_natural_width_and_narrower_ones_fit(browser):
    """Ten columns that cannot fit even wrapped down to their longest words are not squeezed into
    one word a line: natural width, long cells wrapped, a box at most 85% of the window tall (its
    scrollbar on screen), a fade at the hidden edge. Four columns of prose fit, wrapped; five
    columns of names: see the ladder below."""
    wide = _table("wide", [f"column number {i} of ten" for i in range(10)],
                  ["3.13.0", "integers (N,)", "port (one-hot inside)", "<code>['Accuracy']</code>",
                   "<code>keras.metrics.Accuracy</code>", "(128,) float32", "(128, 10) → (128, 10, 10)", "0.000",
                   "10.2% after 60 steps", f"<code>{WIDE_CELL}</code>"])
    fits = _table("fits", ["#", "pitfall", "symptom measured here", "fix"], ["1", PROSE_CELL, PROSE_CELL, PROSE_CELL])
    # five columns of one unbreakable name each, the names 10 to 30 letters long
    ladder = "".join(_table(f"names{n}", list("abcde"), [f"<code>{'x' * n}</code>"] * 5) for n in range(10, 31))
    seen = browser(_chapter_page(CHAPTERS[0]), '<div class="capsbook-probe">' + wide + fits + ladder + "</div>")
    w, f = seen["tables"]["wide"], seen["tables"]["fits"]
    assert "capsbook-wide" in w["box"] and "capsbook-overflow" in w["box"], w
    assert w["width"] > w["boxWidth"] and w["headerLines"] == 1, f"wide table squeezed or not scrolling: {w}"
    assert w["boxHeight"] <= 0.85 * HEIGHT + 1, w
    box = next(b for b in seen["boxes"] if "capsbook-wide" in b["what"])
    assert box["scrollbar"] >= 8 and box["mask"], box
    assert "capsbook-wide" not in f["box"] and "capsbook-overflow" not in f["box"], f
    assert "capsbook-compact" not in f["box"] and f["width"] <= f["boxWidth"], f"the prose table should fit, wrapped: {f}"
    # As the names grow, the table fits; then fits in smaller type; then, a little too wide even so,
    # scrolls in smaller type; then, more than 25% too wide, scrolls at natural width.
    states = ""
    for n in range(10, 31):
        t = seen["tables"][f"names{n}"]
        if "capsbook-wide" in t["box"]:
            states += "n"
            assert t["width"] > 1.25 * t["boxWidth"], (n, t)
        elif "capsbook-overflow" in t["box"]:
            states += "s"
            assert "capsbook-compact" in t["box"] and t["boxWidth"] < t["width"] <= 1.25 * t["boxWidth"] + 1, (n, t)
        else:
            states += "c" if "capsbook-compact" in t["box"] else "f"
            assert t["width"] <= t["boxWidth"], (n, t)
    assert re.fullmatch("f+c+s+n+", states), states
