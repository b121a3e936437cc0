"""Execute chapters the way the book build does and report what a reader would see.

    python scripts/run_notebook.py book/05_routing.ipynb [more.ipynb ...]

For each notebook: runs it in a fresh python3 kernel (cwd = its folder), never modifies the
file, and prints the time taken plus every problem: an error, any stderr output (the book
builds with -W, where stderr is a warning), TensorFlow log lines. Exit code 1 if any.
Set CAPSBOOK_QUICK=1 to run in quick mode, as CI does.
"""

import os
import re
import sys
import time

import nbclient
import nbformat

TF_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages)", re.M)


def check(path):
    nb = nbformat.read(path, as_version=4)
    problems = []
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        problems.append(f"cell error:\n{str(e)[-3000:]}")
    seconds = time.perf_counter() - t0
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                problems.append(f"cell {i}: stderr output: {text[:500]!r}")
            if TF_LOG.search(text):
                problems.append(f"cell {i}: TensorFlow log line: {TF_LOG.search(text).group(0)!r}")
    print(f"{path}: {seconds:.0f} s, {len(problems)} problem(s)")
    for p in problems:
        print("  -", p)
    return not problems


if __name__ == "__main__":
    ok = all([check(p) for p in sys.argv[1:]])
    sys.exit(0 if ok else 1)
