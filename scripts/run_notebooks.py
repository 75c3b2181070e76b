"""Execute the notebook series headless, in reading order, as "Restart & Run All" would.

    python scripts/run_notebooks.py            # run all into build/notebooks/, print 06's generated text
    python scripts/run_notebooks.py --inplace  # re-run and save outputs into notebooks/ (for committing)
    python scripts/run_notebooks.py 05_attention 07_llama   # just these

Kernels use the IPython profile in tests/ipython, which keeps TensorFlow's C++ log lines out of the
saved outputs (they go to this terminal instead).
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("IPYTHONDIR", str(ROOT / "tests" / "ipython"))

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402


def last_text_output(nb) -> str:
    for cell in reversed(nb.cells):
        streams = [o.text for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout"]
        if streams:
            return "".join(streams)
    return ""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook names (default: all, in order)")
    parser.add_argument("--inplace", action="store_true", help="save outputs into notebooks/")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        notebooks = [p for p in notebooks if p.stem in args.names or p.name in args.names]
    out_dir = ROOT / "notebooks" if args.inplace else ROOT / "build" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = None
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, out_dir / path.name)
        print(f"{path.name:<28} {time.perf_counter() - start:5.1f} s", flush=True)
    if nb is not None:
        print(f"\nexecuted notebooks are in {out_dir.relative_to(ROOT)}/; the last one ends with:\n")
        print(last_text_output(nb))


if __name__ == "__main__":
    sys.exit(main())
