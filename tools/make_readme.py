"""Render README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which cannot be installed offline).

Usage: python tools/make_readme.py [--check]   (--check: exit 1 if README.md is out of date)
"""
from __future__ import annotations
import re, sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n"

def _keep(cell) -> bool:
    "Drop cells nbdev hides from docs (#| hide, #| export without echo)."
    flags = re.findall(r"^#\|\s*(.+)$", cell.source, flags=re.M)
    return not any(f.strip().split()[0] in ("hide", "export", "exporti", "default_exp") for f in flags if f.strip())

def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "Markdown text of the notebook: directive lines removed, hidden cells dropped, outputs kept."
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells = [c for c in nb.cells if _keep(c)]
    for c in nb.cells:
        c.source = re.sub(r"^#\|.*\n?", "", c.source, flags=re.M)
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return HEADER + body

def main(argv: list[str]) -> int:
    text, readme = render(), ROOT / "README.md"
    if "--check" in argv:
        if not readme.exists() or readme.read_text() != text:
            print("README.md is out of date: run `make readme` (python tools/make_readme.py)", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
