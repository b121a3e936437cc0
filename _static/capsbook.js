// Wide tables and long lines: mark each box that scrolls sideways with what capsbook.css needs.
//   capsbook-compact   a table too wide for the page as the theme lays it out: smaller type
//   capsbook-wide      a table still more than 25% too wide, every cell wrapped: natural width
//   capsbook-overflow  content wider than the box (code, an output, a table, a display equation):
//                      it scrolls; capsbook-scrolled: scrolled away from the left edge;
//                      capsbook-at-end: scrolled to the right edge; capsbook-vscroll: it
//                      also scrolls up and down (a tall table)
(function () {
  "use strict";
  var BOXES = [".bd-article pre", ".bd-article .cell_output > .output",
               ".bd-article .pst-scrollable-table-container", ".bd-article div.math > mjx-container"].join(", ");

  // A table squeezed down to its longest words that is at most this much wider than the page keeps
  // every column in view but its last few pixels; a wider one is laid out at natural width.
  var NEARLY = 1.25;

  function wider(box) {
    return box.scrollWidth > box.clientWidth + 1;
  }

  function edges(box) {
    var over = wider(box);
    box.classList.toggle("capsbook-overflow", over);
    box.classList.toggle("capsbook-scrolled", over && box.scrollLeft > 1);
    box.classList.toggle("capsbook-at-end", over && box.scrollLeft + box.clientWidth >= box.scrollWidth - 1);
    box.classList.toggle("capsbook-vscroll", over && box.scrollHeight > box.clientHeight + 1);
  }

  // A box that changes size (a hidden cell or a solution opened, a figure loaded) is measured again.
  var resized = window.ResizeObserver ? new ResizeObserver(later) : null, watched = new WeakSet();

  function update() {
    var boxes = document.querySelectorAll(BOXES);
    boxes.forEach(function (box) {
      if (resized && !watched.has(box)) { watched.add(box); resized.observe(box); }
    });
    // Tables first: as the theme lays them out (wrapped to the page); too wide, in smaller type;
    // still more than a quarter too wide, at natural width. Then every box's edges.
    boxes.forEach(function (box) {
      if (box.classList.contains("pst-scrollable-table-container")) {
        box.classList.remove("capsbook-compact", "capsbook-wide");
        if (wider(box)) box.classList.add("capsbook-compact");
        if (box.scrollWidth > NEARLY * box.clientWidth) box.classList.add("capsbook-wide");
      }
    });
    boxes.forEach(edges);
  }

  var pending = null;
  function later() {
    clearTimeout(pending);
    pending = setTimeout(update, 150);
  }

  document.addEventListener("scroll", function (event) {   // scroll events do not bubble: capture
    var box = event.target;
    if (box instanceof Element && box.matches(BOXES)) edges(box);
  }, true);
  window.addEventListener("resize", later);
  window.addEventListener("load", function () {
    update();
    // Typeset maths changes widths; so do web fonts once they arrive.
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(update);
    if (document.fonts && document.fonts.ready) document.fonts.ready.then(update);
  });
})();
