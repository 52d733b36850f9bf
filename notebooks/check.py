#!/usr/bin/env python3
"""Execute notebooks through the real evcxr kernel and fail on anything that went wrong.

A cell fails when the kernel reports an error (compile errors, panics with `:preserve_vars_on_panic 0`),
writes to stderr (evcxr prints a `?` error there and still reports success), or shows an `Html(...)` /
`Svg(...)` value as plain Debug text instead of rendering it. A cell tagged `chart` must produce an
image/svg+xml output. Prints one line per notebook with its wall time; exit status 1 if any failed.

    python notebooks/check.py [--out DIR | --inplace] notebooks/01-convert.ipynb ...
"""

import argparse
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def problems(nb):
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                out.append(f"cell {i}: error: {o.get('ename', '')}: {o.get('evalue', '')}".strip())
            elif o.output_type == "stream" and o.name == "stderr" and o.text.strip():
                out.append(f"cell {i}: wrote to stderr: {o.text.strip()[:400]}")
            # A display value shown through its Debug form: evcxr did not find its `evcxr_display` (the
            # reader sees `Html("<table…")` instead of a table).
            plain = "".join(o.get("data", {}).get("text/plain", ""))
            if plain.lstrip().startswith(("Html(", "Svg(")):
                out.append(f"cell {i}: a table or chart shown as its Debug text: {plain.strip()[:80]}")
        if "chart" in cell.metadata.get("tags", []):
            svg = [o for o in cell.get("outputs", []) if "image/svg+xml" in o.get("data", {})]
            if not svg:
                out.append(f"cell {i}: tagged `chart` but produced no image/svg+xml output")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("notebooks", nargs="+", type=pathlib.Path)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=pathlib.Path, help="write executed notebooks here")
    g.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their outputs")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    a = ap.parse_args()
    failed = 0
    for path in a.notebooks:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, kernel_name="rust", timeout=a.timeout, resources={"metadata": {"path": str(path.parent)}}
        )
        t = time.monotonic()
        try:
            client.execute()
            errs = problems(nb)
        except CellExecutionError as e:
            errs = problems(nb) or [str(e).strip().splitlines()[-1] if str(e).strip() else "cell execution error"]
        except Exception as e:  # kernel died, timeout
            errs = [f"{type(e).__name__}: {e}"]
        wall = time.monotonic() - t
        # In place only on success: a failed run must not replace the committed outputs.
        dest = path if a.inplace else a.out / path.name
        if not a.inplace:
            a.out.mkdir(parents=True, exist_ok=True)
        if not (a.inplace and errs):
            nbformat.write(nb, dest)
        status = "PASS" if not errs else "FAIL"
        print(f"{status} {path.name} ({wall:.1f} s) -> {dest}", flush=True)
        for e in errs:
            print(f"    {e}", flush=True)
        failed += bool(errs)
    print(f"{len(a.notebooks) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
