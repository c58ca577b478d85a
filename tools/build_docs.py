"""Build the documentation site offline: nbdev's processing, nbconvert's MarkdownExporter, latex2mathml, mkdocs.

Usage: python tools/build_docs.py [--out _docs] [--bench benchmarks/results] [--keep-md DIR] [--no-strict]
                                  [--workers N] [--overwrite]

1. `nbdev.serve.proc_nbs()` turns nbs/**/*.ipynb into _proc/ (show_doc cells rendered, export cells hidden,
   frontmatter in a raw cell). Quarto is not involved. A notebook whose processing fails (nbdev executes every
   cell that contains an import to render show_doc; a cell mixing imports with code that needs an earlier,
   unexecuted cell fails) is processed again with only export, pure-import and show_doc cells executed, and the
   build says which cell to fix.
2. Every processed notebook becomes one Markdown page through nbconvert's `MarkdownExporter` and a small page
   template: frontmatter title → H1, description → lead paragraph, `#| hide` / `#| include: false` cells dropped,
   `#| echo: false` sources hidden, outputs kept (text, Markdown, show_doc entries with anchors, HTML tables;
   PNG/SVG/JPEG images and cell attachments written next to the page). `$...$` / `$$...$$` TeX becomes MathML at
   build time (latex2mathml; no MathJax: the site loads nothing from the network); a formula it cannot convert
   stays visible as TeX source.
3. Pages: the landing page (index.ipynb), one API page per numbered notebook (numeric order), the paper map,
   Experiments (nbs/experiments/*.ipynb, when present) and Benchmarks (benchmarks/results/*.json|csv + figures).
4. `mkdocs build --strict` (through mkdocs' Python API, so the navigation is computed here) into `--out`.

It never executes a notebook from top to bottom: pages show the outputs saved in the notebooks.
"""
from __future__ import annotations

import argparse, functools, html, json, os, posixpath, re, shutil, sys, tempfile, time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".patchddm-docs"  # written into every site this script builds; only such folders are replaced silently

def _error(where: Any, problem: str) -> Exception:
    "A `PatchDDMError` (imported lazily: patchddm.core imports torch)."
    sys.path.insert(0, str(ROOT))
    from patchddm.core import PatchDDMError
    return PatchDDMError(where, problem)

# ---------------------------------------------------------------------------------------------------------------
# 1. nbdev processing
# ---------------------------------------------------------------------------------------------------------------

def source_notebooks(nbs: Path) -> list[Path]:
    "The notebooks nbdev documents: nbs/**/*.ipynb, skipping names and folders starting with '_' or '.'."
    out = []
    for p in sorted(nbs.rglob("*.ipynb")):
        rel = p.relative_to(nbs)
        if any(part.startswith(("_", ".")) for part in rel.parts) or ".ipynb_checkpoints" in rel.parts: continue
        out.append(p)
    return out

def _is_mixed(source: str) -> bool:
    "True when a cell's top level holds imports and other statements (nbdev then executes all of it)."
    import ast
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    try: tree = ast.parse("\n".join(lines))
    except SyntaxError: return False
    kinds = {isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body}
    return kinds == {True, False}

def _fallback_process(src: Path, dst: Path, mode: str) -> None:
    "Process one notebook like nbdev's proc_nbs, executing only export/pure-import/show_doc cells ('safe') or none."
    from fastcore.nbio import read_nb, write_nb
    from nbdev import processors as P

    class _SafeExec(P.exec_show_docs):
        "nbdev's show_doc executor, skipping cells that mix imports with other code."
        def __call__(self, cell):
            if cell.cell_type == "code" and not (cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}) \
               and _is_mixed(cell.source): return
            return super().__call__(cell)

    class _Filter(P.FilterDefaults):
        def base_procs(self):
            procs = super().base_procs()
            if mode == "safe": return [_SafeExec if p is P.exec_show_docs else p for p in procs]
            return [p for p in procs if p is not P.exec_show_docs]

    os.environ["IN_TEST"] = "1"
    try:
        nb = read_nb(src)
        _Filter()(nb)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dst)
    finally:
        os.environ.pop("IN_TEST", None)

def _short(exc: BaseException) -> str:
    "One line from nbdev's multi-line processing error: where it failed and the exception's last line."
    text = str(exc).strip()
    head = text.splitlines()[0] if text else type(exc).__name__
    tail = text.splitlines()[-1] if text else ""
    return head.rstrip(" :") + (f" ... {tail}" if tail and tail != head else "")

def process_notebooks(root: Path = ROOT, workers: int | None = None, log=print) -> Path:
    "Run `nbdev.serve.proc_nbs` into root/_proc; re-process failed notebooks with fewer executed cells. Returns _proc."
    import warnings
    from nbdev.serve import proc_nbs
    nbs, proc = root / "nbs", root / "_proc"
    # nbdev warns once per cell mixing imports and code, printing the whole cell; we summarise instead.
    old_env = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"
    warnings.filterwarnings("ignore", message="Found cells containing imports")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        try: proc_nbs(path=str(nbs), n_workers=workers if workers is not None else min(2, os.cpu_count() or 1))
        except Exception as e:  # noqa: BLE001 - nbdev raises a bare Exception naming the notebook title and cell
            log(f"docs: nbdev could not process a notebook: {_short(e)}")
        for src in source_notebooks(nbs):
            dst = proc / src.relative_to(nbs)
            if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime: continue
            rel = src.relative_to(root)
            try: cells = json.loads(src.read_text())["cells"]
            except (ValueError, KeyError, TypeError) as e:
                raise _error(rel, f"not a readable notebook ({type(e).__name__})") from None
            code = [(i, _text(c.get("source", ""))) for i, c in enumerate(cells) if c.get("cell_type") == "code"]
            exports = any(re.search(r"^\s*#\|\s*export", s, re.M) for _, s in code)
            mixed = [f"#{i} ({s.strip().splitlines()[0][:40]!r})" for i, s in code if exports and _is_mixed(s)]
            try:
                _fallback_process(src, dst, "safe")
                if mixed:  # without such cells the fallback's result is what nbdev would have written
                    log(f"docs: {rel}: processed without executing its code cells that mix imports with other code "
                        f"({', '.join(mixed)}; 0-based); nbdev executes such cells to render show_doc: put the "
                        "imports in a cell of their own")
            except Exception as e:  # noqa: BLE001
                try: _fallback_process(src, dst, "none")
                except Exception as e2:  # noqa: BLE001 - unreadable notebook JSON, a failing processor ...
                    raise _error(rel, f"nbdev cannot process this notebook ({_short(e2)})") from None
                log(f"docs: {rel}: API reference left out, its export cells fail to run: {_short(e)}")
        proc.touch()
    finally:
        os.chdir(cwd)
        if old_env is None: os.environ.pop("PYTHONWARNINGS", None)
        else: os.environ["PYTHONWARNINGS"] = old_env
    return proc

# ---------------------------------------------------------------------------------------------------------------
# 2. notebook → Markdown: nbconvert's MarkdownExporter with a page template; math by latex2mathml
# ---------------------------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
MAX_STREAM_LINES = 400

def cell_directives(source: str) -> tuple[dict[str, str], str]:
    "nbdev/Quarto `#| key: value` directives of a code cell, and its source without those lines."
    dirs, keep = {}, []
    for line in source.splitlines():
        m = _DIRECTIVE.match(line)
        if m: dirs[m.group(1).lower()] = m.group(2).strip().lower()
        else: keep.append(line)
    return dirs, "\n".join(keep).strip("\n")

def _fence(body: str, lang: str = "") -> str:
    "A fenced code block around `body`, with a fence longer than any backtick run inside it."
    n = max([3] + [len(m) + 1 for m in re.findall(r"`{3,}", body)])
    return f"{'`' * n}{lang}\n{body.rstrip()}\n{'`' * n}"

def _text(v: Any) -> str:
    "A notebook string field as one string (nbformat allows a list of lines)."
    return "".join(v) if isinstance(v, list) else str(v)

def _clean_stream(text: str) -> str:
    "Strip ANSI colours, resolve carriage returns (progress bars) and cap very long streams."
    text = _ANSI.sub("", text)
    lines = [l.rsplit("\r", 1)[-1] for l in text.replace("\r\n", "\n").split("\n")]
    if len(lines) > MAX_STREAM_LINES:
        lines = lines[:MAX_STREAM_LINES] + [f"... ({len(lines) - MAX_STREAM_LINES} more lines in the notebook)"]
    return "\n".join(lines)

@dataclass
class Rendered:
    "One page: its Markdown, its files (relative path → bytes), its documented symbols (anchor ids)."
    text: str
    files: dict[str, bytes] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)
    title: str = ""
    description: str = ""

def _frontmatter(nb: dict) -> tuple[dict, list[dict]]:
    "The YAML frontmatter of a processed notebook (its first raw cell between --- lines) and the other cells."
    import yaml
    cells = list(nb.get("cells", []))
    if cells and cells[0].get("cell_type") == "raw":
        src = _text(cells[0].get("source", "")).strip()
        if src.startswith("---"):
            body = src.strip("-\n ")
            try: meta = yaml.safe_load(body) or {}
            except yaml.YAMLError: meta = {}
            if isinstance(meta, dict): return meta, cells[1:]
    return {}, cells

_SHOWDOC_HEAD = re.compile(r"^(#{2,4}) +([A-Za-z_][\w.]*)\s*$", re.M)

def _showdoc_markdown(md: str, symbols: list[str]) -> str:
    "show_doc's Markdown with its leading rule dropped and its heading given the symbol's name as anchor id."
    md = re.sub(r"^\s*---\s*\n", "", md.strip("\n") + "\n", count=1)
    def head(m):
        symbols.append(m.group(2))
        return f"{m.group(1)} {m.group(2)} {{ #{m.group(2)} .doc-symbol }}"
    return _SHOWDOC_HEAD.sub(head, md, count=1)

# Which one representation of an output its page shows, in order of preference (MarkdownExporter's own order puts
# HTML first, which would show a figure's or show_doc's HTML fallback instead of the image or the Markdown).
MIME_ORDER = ("image/png", "image/jpeg", "image/svg+xml", "text/markdown", "text/html", "text/latex", "text/plain")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "*An interactive widget: open the notebook in JupyterLab to use it.*"

def doc_output(out: Any, showdoc: bool, symbols: list[str]) -> Any | None:
    "One output (a NotebookNode, changed in place) as its page shows it: one MIME type, clean text; None if empty."
    kind = out.get("output_type")
    if kind == "stream":
        out["text"] = _clean_stream(_text(out.get("text", ""))).strip("\n")
        return out if out["text"].strip() else None
    if kind == "error":
        out["evalue"] = _ANSI.sub("", str(out.get("evalue", "")))
        return out
    data, meta = out.get("data", {}), out.setdefault("metadata", {})
    meta["doc_class"] = "nb-markdown"
    if WIDGET_MIME in data: data, meta["doc_class"] = {"text/markdown": WIDGET_NOTE}, "nb-widget"
    mime = next((m for m in MIME_ORDER if m in data), None)
    if mime is None: return None
    value = _text(data[mime])
    if mime == "text/markdown" and showdoc: value, meta["doc_class"] = _showdoc_markdown(value, symbols), "doc-api"
    elif mime == "text/html": value = re.sub(r"^\s*\n", "", value.strip(), flags=re.M)  # a blank line ends raw HTML
    elif mime == "text/plain": value = _ANSI.sub("", value).strip("\n")
    if not value.strip(): return None
    out["data"] = {mime: value}
    return out

def doc_cell(cell: Any, index: int, symbols: list[str]) -> Any | None:
    "A code cell (NotebookNode, changed in place) as its page shows it, or None when nbdev's directives hide it."
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor
    dirs, body = cell_directives(_text(cell.get("source", "")))
    if "hide" in dirs or dirs.get("include") == "false": return None
    showdoc = bool(re.search(r"^show_doc\(", body, re.M))
    cell["source"] = body
    if dirs.get("echo") == "false" or showdoc or not body.strip():
        cell.setdefault("metadata", {})["transient"] = {"remove_source": True}  # nbconvert's templates honour it
    if dirs.get("output") == "false": cell["outputs"] = []
    CoalesceStreamsPreprocessor().preprocess_cell(cell, {}, index)  # consecutive prints read as one block
    cell["outputs"] = [o for o in (doc_output(o, showdoc, symbols) for o in cell.get("outputs", [])) if o is not None]
    return cell

# The page template: nbconvert's Markdown template, with code fenced and each output in a styled block
# (classes in docs_src/stylesheets/extra.css; `markdown="1"` lets md_in_html render the Markdown inside).
_TEMPLATE = r"""{%- extends 'index.md.j2' -%}
{% block input %}
{{ cell.source | fence('python') }}
{% endblock input %}
{% block stream %}
<div class="nb-output nb-{{ output.name }}" markdown="1">

{{ output.text | fence('text') }}

</div>
{% endblock stream %}
{% block error %}
<div class="nb-output nb-error" markdown="1">

{{ (output.ename ~ ': ' ~ output.evalue) | fence('text') }}

</div>
{% endblock error %}
{% block data_png %}
<div class="nb-output nb-figure" markdown="1">

![output]({{ output.metadata.filenames['image/png'] | path2url }})

</div>
{% endblock data_png %}
{% block data_jpg %}
<div class="nb-output nb-figure" markdown="1">

![output]({{ output.metadata.filenames['image/jpeg'] | path2url }})

</div>
{% endblock data_jpg %}
{% block data_svg %}
<div class="nb-output nb-figure" markdown="1">

![output]({{ output.metadata.filenames['image/svg+xml'] | path2url }})

</div>
{% endblock data_svg %}
{% block data_markdown %}
<div class="{{ 'nb-output ' if output.metadata.doc_class != 'doc-api' }}{{ output.metadata.doc_class }}" markdown="1">

{{ output.data['text/markdown'] | trim }}

</div>
{% endblock data_markdown %}
{% block data_html %}
<div class="nb-output nb-html">
{{ output.data['text/html'] }}
</div>
{% endblock data_html %}
{% block data_latex %}
{{ output.data['text/latex'] | trim | fence('latex') }}
{% endblock data_latex %}
{% block data_text %}
<div class="nb-output nb-result" markdown="1">

{{ output.data['text/plain'] | fence('text') }}

</div>
{% endblock data_text %}
"""

@functools.lru_cache(maxsize=1)
def _exporter() -> Any:
    "nbconvert's MarkdownExporter with the page template (images go to resources['outputs'], named by cell)."
    from jinja2 import DictLoader
    from nbconvert import MarkdownExporter
    return MarkdownExporter(extra_loaders=[DictLoader({"patchddm-page.md.j2": _TEMPLATE})],
                            template_file="patchddm-page.md.j2", filters={"fence": _fence})

def _tidy(md: str) -> str:
    "Collapse runs of blank lines outside code (the template leaves many) to one and end with one newline."
    out: list[str] = []
    for code, t in split_code(md):
        if not code:
            t = re.sub(r"\n{3,}", "\n\n", t)
            if out and out[-1].endswith("\n") and t.startswith("\n\n"): t = t[1:]  # after a fence's own newline
        out.append(t)
    return "".join(out).strip("\n") + "\n"

_CELL_KEYS = {"markdown": {"cell_type", "id", "metadata", "source", "attachments"},
              "code": {"cell_type", "id", "metadata", "source", "outputs", "execution_count"}}

def _valid_cell(cell: Any, nbformat_minor: int) -> Any:
    "A cell nbconvert's validation accepts: no keys or metadata nbdev/execnb add (`has_sd`, timings ...)."
    keep = _CELL_KEYS.get(cell.get("cell_type"), set(cell))
    for key in [k for k in cell if k not in keep or (k == "id" and nbformat_minor < 5)]: del cell[key]
    cell["metadata"] = {}  # the page needs none of it
    return cell

def _node_copy(nb: dict) -> Any:
    "A NotebookNode copy of `nb`: list-of-lines fields joined, ids added where nbformat 4.5 wants them."
    import nbformat
    data = json.loads(json.dumps(nb))
    if data.get("nbformat_minor", 0) >= 5:
        for i, cell in enumerate(data.get("cells", [])): cell.setdefault("id", f"cell-{i}")
    return nbformat.reads(json.dumps(data), as_version=4)

def notebook_to_markdown(nb: dict, stem: str, title: str | None = None) -> Rendered:
    "A processed notebook (dict, nbformat 4) → Rendered Markdown page named `stem` (images under `<stem>_files/`)."
    node = _node_copy(nb)
    meta, cells = _frontmatter(node)
    cells = [_valid_cell(c, node.get("nbformat_minor", 0)) for c in cells]
    title = title or str(meta.get("title") or posixpath.basename(stem))
    desc = str(meta.get("description") or "").strip()
    symbols: list[str] = []
    kept = []
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "markdown": kept.append(cell)
        elif cell.get("cell_type") == "code" and doc_cell(cell, i, symbols) is not None: kept.append(cell)
    node["cells"], node["metadata"] = kept, {}
    folder, base = posixpath.split(stem)
    body, res = _exporter().from_notebook_node(node, resources={"output_files_dir": f"{base}_files",
                                                                "unique_key": base})
    files = {posixpath.join(folder, name.replace(os.sep, "/")): blob
             for name, blob in (res.get("outputs") or {}).items()}
    head = f"# {title}\n\n" + (f"{desc}\n{{: .lead }}\n\n" if desc else "")
    return Rendered(text=_tidy(head + body), files=files, symbols=symbols, title=title, description=desc)

# ---- Markdown post-processing: math, links, symbol cross-references -------------------------------------------

_FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})")

def split_code(md: str) -> list[tuple[bool, str]]:
    "Split Markdown into (is_code, text) pieces: fenced blocks and inline code spans are code."
    pieces: list[tuple[bool, str]] = []
    buf: list[str] = []
    fence: str | None = None
    for line in md.splitlines(keepends=True):
        m = _FENCE_OPEN.match(line)
        if fence is None and m:
            if buf: pieces.append((False, "".join(buf))); buf = []
            fence = m.group(2); buf.append(line)
        elif fence is not None:
            buf.append(line)
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                pieces.append((True, "".join(buf))); buf = []; fence = None
        else: buf.append(line)
    if buf: pieces.append((fence is not None, "".join(buf)))
    out: list[tuple[bool, str]] = []
    for is_code, text in pieces:
        if is_code: out.append((True, text)); continue
        pos = 0
        for m in re.finditer(r"(?<!\\)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, flags=re.S):
            if m.start() > pos: out.append((False, text[pos:m.start()]))
            out.append((True, m.group(0))); pos = m.end()
        if pos < len(text): out.append((False, text[pos:]))
    return out

def map_text(md: str, fn) -> str:
    "Apply `fn` to the non-code parts of Markdown `md`."
    return "".join(t if code else fn(t) for code, t in split_code(md))

# Math: latex2mathml turns TeX into MathML at build time (every current browser renders MathML; the site loads no
# MathJax/KaTeX). A formula it cannot convert stays visible as TeX source.
_MD_SPECIAL = {"*": "&#42;", "_": "&#95;", "\\": "&#92;", "[": "&#91;", "]": "&#93;", "`": "&#96;", "$": "&#36;"}

def _md_safe(text: str) -> str:
    "Text of a MathML element with Markdown's inline markers as entities, so Python-Markdown leaves it alone."
    return "".join(_MD_SPECIAL.get(ch, ch) for ch in text)

def tex_to_mathml(tex: str, display: bool = False) -> str | None:
    "MathML for a TeX formula (latex2mathml; display='block' when `display`), or None when it cannot convert it."
    from latex2mathml.converter import convert
    try: mathml = convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # noqa: BLE001 - latex2mathml raises assorted errors (its own, IndexError ...) on bad TeX
        return None
    if re.search(r">[^<]*\\[A-Za-z]", mathml): return None  # it passes commands it does not know through as text
    return re.sub(r">([^<]+)<", lambda m: f">{_md_safe(m.group(1))}<", mathml)

_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$\w])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?![\w$])")

def convert_math(md: str) -> str:
    "Render $…$ and $$…$$ outside code as MathML (see `tex_to_mathml`); formulas it cannot convert stay as TeX."
    def display(m: re.Match) -> str:
        tex = m.group(1).strip()
        mathml = tex_to_mathml(tex, display=True)
        if mathml is not None: return f'\n\n<div class="math-display">{mathml}</div>\n\n'
        return "\n\n" + _fence(tex, "latex") + "\n\n"
    def inline(m: re.Match) -> str:
        mathml = tex_to_mathml(m.group(1))
        if mathml is not None: return f'<span class="math">{mathml}</span>'  # a bare <math> would start an HTML block
        return f'<code class="math-tex">{html.escape(m.group(1))}</code>'
    # $$ blocks may contain TeX that split_code would read as code spans (rare); handle them on the raw text.
    pieces = split_code(md)
    joined = "".join(("\0" + str(i) + "\0") if code else t for i, (code, t) in enumerate(pieces))
    joined = _DISPLAY.sub(display, joined)
    joined = _INLINE.sub(inline, joined)
    return re.sub(r"\0(\d+)\0", lambda m: pieces[int(m.group(1))][1], joined)

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")

def rewrite_links(md: str, page: str, pages_by_source: dict[str, str], pages: set[str]) -> str:
    "Point links at notebooks (`x.ipynb#a`) or nbdev pages (`x.html#a`) to the site's Markdown pages."
    here = posixpath.dirname(page)
    def fix(m):
        target = m.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target): return m.group(0)
        path, _, anchor = target.partition("#")
        cand = posixpath.normpath(posixpath.join(here, path))
        new = None
        if path.endswith(".ipynb"): new = pages_by_source.get(cand)
        elif path.endswith(".html") and cand[:-5] + ".md" in pages: new = cand[:-5] + ".md"
        if new is None: return m.group(0)
        rel = posixpath.relpath(new, here or ".")
        return f"{m.group(1)}{rel}{'#' + anchor if anchor else ''}{m.group(3)}"
    return map_text(md, lambda t: _LINK.sub(fix, t))

def linkify(md: str, page: str, targets: dict[str, str]) -> str:
    "Turn `name` code spans that name a documented symbol (or module) into links to its anchor."
    here = posixpath.dirname(page)
    out = []
    pieces = split_code(md)
    for j, (code, t) in enumerate(pieces):
        prev = pieces[j - 1][1] if j else ""
        nxt = pieces[j + 1][1] if j + 1 < len(pieces) else ""
        m = re.fullmatch(r"`([\w.]+)(\(\))?`", t) if code else None
        in_link = prev.endswith("[") or nxt.startswith("](")
        heading = prev.rsplit("\n", 1)[-1].lstrip().startswith("#")
        if m and not in_link and not heading and m.group(1) in targets:
            dest = targets[m.group(1)]
            path, _, anchor = dest.partition("#")
            rel = posixpath.relpath(path, here or ".") if path != page else ""
            out.append(f"[{t}]({rel}{'#' + anchor if anchor else ''})")
        else: out.append(t)
    return "".join(out)

def link_targets(symbols: dict[str, list[str]], modules: dict[str, str]) -> dict[str, str]:
    "Names → 'page.md#anchor': `sym`, `module.sym`, `patchddm.module.sym` (bare names only where unique)."
    targets: dict[str, str] = {}
    bare: dict[str, list[str]] = {}
    for page, syms in symbols.items():
        mod = posixpath.splitext(posixpath.basename(page))[0]
        for s in syms:
            dest = f"{page}#{s}"
            targets[f"{mod}.{s}"] = targets[f"patchddm.{mod}.{s}"] = dest
            bare.setdefault(s, []).append(dest)
    for s, dests in bare.items():
        if len(set(dests)) == 1: targets.setdefault(s, dests[0])
    for name, page in modules.items(): targets.setdefault(name, page)
    return targets

# ---------------------------------------------------------------------------------------------------------------
# 3. Benchmarks page
# ---------------------------------------------------------------------------------------------------------------

MAX_TABLE_ROWS = 200

def _cell(v: Any) -> str:
    "A value as a Markdown table cell."
    if isinstance(v, float): s = f"{v:.4g}"
    elif isinstance(v, (list, tuple)):
        s = ", ".join(_cell(x) for x in v[:8]) + (f", … ({len(v)} values)" if len(v) > 8 else "")
    elif isinstance(v, dict): s = json.dumps(v)[:200]
    elif v is None: s = ""
    else: s = str(v)
    return s.replace("|", "\\|").replace("\n", " ")

def md_table(columns: list[str], rows: list[list[Any]]) -> str:
    "A Markdown table (at most MAX_TABLE_ROWS rows, then a note)."
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows[:MAX_TABLE_ROWS]: lines.append("| " + " | ".join(_cell(v) for v in r) + " |")
    if len(rows) > MAX_TABLE_ROWS: lines.append(f"\n*… {len(rows) - MAX_TABLE_ROWS} more rows in the file.*")
    return "\n".join(lines)

def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    "Nested dict → {'a.b': value}."
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v: out.update(_flat(v, f"{prefix}{k}."))
        else: out[f"{prefix}{k}"] = v
    return out

def json_tables(obj: Any, name: str = "") -> tuple[list[tuple[str, list[str], list[list]]], dict[str, Any]]:
    "Generic JSON → ([(caption, columns, rows)], {dotted key: scalar}): lists of objects and dicts of objects become tables."
    tables: list[tuple[str, list[str], list[list]]] = []
    scalars: dict[str, Any] = {}
    def is_scalar(v): return not isinstance(v, (dict, list))
    def records(recs):
        flat = [_flat(r) for r in recs]
        cols: list[str] = []
        for r in flat: cols += [k for k in r if k not in cols]
        return cols, [[r.get(c) for c in cols] for r in flat]
    def walk(o, path):
        key = ".".join(path)
        if isinstance(o, list) and o and all(isinstance(x, dict) for x in o):
            tables.append((key or name, *records(o)))
        elif isinstance(o, dict) and o and all(isinstance(v, dict) and v for v in o.values()) \
                and all(all(is_scalar(x) or isinstance(x, dict) for x in v.values()) for v in o.values()):
            tables.append((key or name, *records([{"": k, **v} for k, v in o.items()])))
        elif isinstance(o, dict) and o:
            for k, v in o.items(): walk(v, path + [str(k)])
        else: scalars[key or name] = o
    walk(obj, [])
    return tables, scalars

def benchmarks_page(results: Path, stem: str = "benchmarks") -> Rendered:
    "The Benchmarks page: one section per result name (X.json, X.csv, X.png/svg under `results`), tables + figures."
    parts = ["# Benchmarks",
             "Measurements written by the scripts in `benchmarks/` (`make bench`) into `benchmarks/results/`, "
             "rendered as they are: one section per benchmark, its figure, its tables, then the machine and "
             "setup it ran on.\n{: .lead }"]
    files: dict[str, bytes] = {}
    found = sorted(p for p in results.rglob("*") if p.is_file() and p.suffix.lower() in
                   (".json", ".csv", ".png", ".svg")) if results.is_dir() else []
    if not found:
        parts.append("*No results yet: run `make bench` to measure memory and time, then rebuild the docs.*")
    groups: dict[str, list[Path]] = {}
    for p in found: groups.setdefault(p.relative_to(results).with_suffix("").as_posix(), []).append(p)
    for name, paths in groups.items():
        parts.append(f"## {name}")
        by_ext = {p.suffix.lower(): p for p in paths}
        json_tabs, scalars, n_json_rows = [], {}, set()
        if ".json" in by_ext:
            shown = f"benchmarks/results/{name}.json"
            try: obj = json.loads(by_ext[".json"].read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise _error(shown, f"not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
            if isinstance(obj, dict) and isinstance(obj.get("description"), str):
                parts.append(obj["description"])
                obj = {k: v for k, v in obj.items() if k != "description"}
            json_tabs, scalars = json_tables(obj, name)
            n_json_rows = {(len(rows), tuple(cols)) for _, cols, rows in json_tabs}
        for ext in (".png", ".svg"):
            if ext in by_ext:
                fname = f"{stem}_files/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}{ext}"
                files[fname] = by_ext[ext].read_bytes()
                parts.append(f'<div class="nb-output nb-figure" markdown="1">\n\n![{name}]'
                             f'({posixpath.basename(stem)}_files/{posixpath.basename(fname)})\n\n</div>')
        for cap, cols, rows in json_tabs:
            parts.append(f"**{cap}** (from `{name}.json`)")
            parts.append(md_table(cols, rows))
        if ".csv" in by_ext:
            import csv
            try:
                with open(by_ext[".csv"], newline="") as fh: table = [r for r in csv.reader(fh) if r]
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                raise _error(f"benchmarks/results/{name}.csv", f"not a readable CSV ({e.__class__.__name__})") from None
            cols, rows = (table[0], table[1:]) if table else ([], [])
            if (len(rows), tuple(cols)) in n_json_rows:
                parts.append(f"*The rows are also in `{name}.csv`.*")
            elif cols:
                parts.append(f"**{posixpath.basename(name)}.csv**")
                parts.append(md_table(cols, rows))
        if scalars:
            table = md_table(["key", "value"], [[k, v] for k, v in scalars.items()])
            parts.append('??? info "Machine, setup and other values"\n\n' + "\n".join("    " + l for l in table.splitlines()))
    return Rendered(text="\n\n".join(parts) + "\n", files=files, title="Benchmarks")

# ---------------------------------------------------------------------------------------------------------------
# 4. assemble and build
# ---------------------------------------------------------------------------------------------------------------

def _number_key(rel: str) -> tuple[int, str]:
    "Sort key of a numbered notebook name: its leading number as an integer (9 before 10), then the name."
    m = re.match(r"\d+", rel)
    return (int(m.group()) if m else -1, rel)

def page_name(nb_rel: str, meta: dict) -> str:
    "Site path of a notebook's page: nbdev's `output-file` stem (core.md for 00_core.ipynb) in the notebook's folder."
    folder = posixpath.dirname(nb_rel)
    out = str(meta.get("output-file") or "")
    stem = posixpath.splitext(out)[0] if out else posixpath.splitext(posixpath.basename(nb_rel))[0]
    return posixpath.join(folder, stem + ".md") if folder else stem + ".md"

@dataclass
class Site:
    "Pages (path → Rendered) and the mkdocs navigation."
    pages: dict[str, Rendered]
    nav: list
    warnings: list[str]

def assemble(proc: Path, nbs: Path, bench_results: Path) -> Site:
    "Render every processed notebook plus the Benchmarks page; cross-link them; return pages and nav."
    pages: dict[str, Rendered] = {}
    by_source: dict[str, str] = {}
    warnings: list[str] = []
    for src in source_notebooks(nbs):
        rel = src.relative_to(nbs).as_posix()
        pnb = proc / rel
        if not pnb.exists():
            warnings.append(f"{rel}: no processed copy in _proc/, page left out"); continue
        nb = json.loads(pnb.read_text())
        meta, _ = _frontmatter(nb)
        page = page_name(rel, meta)
        if page in pages:
            raise _error(f"nbs/{rel}", f"its page {page} clashes with another notebook's (set a different title)")
        pages[page] = notebook_to_markdown(nb, posixpath.splitext(page)[0])
        by_source[rel] = page
    if "benchmarks.md" in pages: raise _error("nbs/", "a notebook's page is named benchmarks.md, which the site needs")
    pages["benchmarks.md"] = benchmarks_page(bench_results)
    modules = {}
    for rel, page in by_source.items():
        if "/" in rel: continue
        stem = posixpath.splitext(page)[0]
        modules[f"patchddm.{stem}"] = page
        modules[posixpath.splitext(rel)[0]] = page  # `00_core` in the landing page's layout table
    targets = link_targets({p: r.symbols for p, r in pages.items()}, modules)
    names = set(pages)
    for page, r in pages.items():
        text = rewrite_links(r.text, page, by_source, names)
        text = convert_math(text)
        r.text = linkify(text, page, targets)
    # navigation: landing page, API pages in pipeline (file-name) order, paper map, experiments, benchmarks
    nav: list = []
    if "index.ipynb" in by_source: nav.append({"Home": by_source["index.ipynb"]})
    top = [rel for rel in by_source if "/" not in rel and rel not in ("index.ipynb", "paper_map.ipynb")]
    numbered = sorted((rel for rel in top if re.match(r"^\d", rel)), key=_number_key)
    other = [rel for rel in top if rel not in numbered]
    if numbered: nav.append({"API": [{pages[by_source[r]].title: by_source[r]} for r in numbered]})
    if "paper_map.ipynb" in by_source: nav.append({"Paper map": by_source["paper_map.ipynb"]})
    for rel in other: nav.append({pages[by_source[rel]].title: by_source[rel]})
    exps = [rel for rel in by_source if rel.startswith("experiments/")]
    if exps: nav.append({"Experiments": [{pages[by_source[r]].title: by_source[r]} for r in exps]})
    nav.append({"Benchmarks": "benchmarks.md"})
    return Site(pages=pages, nav=nav, warnings=warnings)

def write_stage(site: Site, stage: Path, assets: Path) -> None:
    "Write the Markdown pages, their files and the static assets (docs_src/) into the mkdocs docs folder `stage`."
    if assets.is_dir(): shutil.copytree(assets, stage, dirs_exist_ok=True)
    for page, r in site.pages.items():
        (stage / page).parent.mkdir(parents=True, exist_ok=True)
        (stage / page).write_text(r.text)
        for name, blob in r.files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(blob)

def _check_out(out: Path, overwrite: bool) -> None:
    "Refuse to replace a folder that is not a previous build of this script (unless `overwrite`)."
    if not out.exists(): return
    if not out.is_dir(): raise _error(out, "exists and is not a folder")
    if (out / MARKER).exists() or not any(out.iterdir()) or overwrite: return
    raise _error(out, "exists and is not a site built by tools/build_docs.py (pass --overwrite to replace it)")

def mkdocs_build(stage: Path, site_dir: Path, nav: list, strict: bool, config: Path) -> None:
    "Run mkdocs' build on the staged pages; warnings print, and fail the build when `strict`."
    import logging
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort, ConfigurationError
    log = logging.getLogger("mkdocs")
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "_docs", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr); h.setLevel(logging.WARNING); h._docs = True
        h.setFormatter(logging.Formatter("mkdocs %(levelname)s: %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.WARNING)
    try:
        cfg = load_config(str(config), docs_dir=str(stage), site_dir=str(site_dir), nav=nav, strict=strict)
        build(cfg)
    except (Abort, ConfigurationError) as e:
        raise _error(config.name, f"mkdocs build failed: {e}") from None

def build_site(out: Path | str = ROOT / "_docs", strict: bool = True, workers: int | None = None,
               keep_md: Path | str | None = None, overwrite: bool = False, root: Path = ROOT,
               bench: Path | str | None = None, log=print) -> dict:
    "Process the notebooks, render the pages and build the site into `out` (replaced only when complete)."
    t0 = time.time()
    out = Path(out).resolve()
    _check_out(out, overwrite)
    if keep_md: _check_out(Path(keep_md).resolve(), overwrite)  # fail before the slow part
    proc = process_notebooks(root, workers, log=log)
    t1 = time.time()
    site = assemble(proc, root / "nbs", Path(bench) if bench else root / "benchmarks" / "results")
    for w in site.warnings: log(f"docs: {w}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="patchddm-docs-md-") as stage_s:
        stage = Path(stage_s)
        write_stage(site, stage, root / "docs_src")
        if keep_md:
            keep = Path(keep_md).resolve()
            _check_out(keep, overwrite)
            if keep.exists(): shutil.rmtree(keep)
            shutil.copytree(stage, keep)
            (keep / MARKER).write_text("Markdown pages written by tools/build_docs.py --keep-md\n")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        umask = os.umask(0); os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the site is meant to be served
        try:
            mkdocs_build(stage, tmp, site.nav, strict, root / "mkdocs.yml")
            (tmp / MARKER).write_text("built by tools/build_docs.py\n")
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                out.rename(old); tmp.rename(out); shutil.rmtree(old)
            else: tmp.rename(out)
        finally:
            if tmp.exists(): shutil.rmtree(tmp)
    t2 = time.time()
    return dict(out=str(out), pages=sorted(site.pages), seconds=round(t2 - t0, 1),
                proc_seconds=round(t1 - t0, 1), render_seconds=round(t2 - t1, 1))

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the patchddm documentation site (offline) into --out.")
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="site folder (default: _docs)")
    ap.add_argument("--no-strict", action="store_true", help="do not fail on mkdocs warnings (broken links ...)")
    ap.add_argument("--workers", type=int, default=None, help="processes for nbdev's notebook processing")
    ap.add_argument("--keep-md", default=None, help="also copy the generated Markdown pages to this folder")
    ap.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a docs build")
    ap.add_argument("--bench", default=None, help="benchmark results folder (default: benchmarks/results)")
    a = ap.parse_args(argv)
    try:
        info = build_site(a.out, strict=not a.no_strict, workers=a.workers, keep_md=a.keep_md, overwrite=a.overwrite,
                          bench=a.bench)
    except Exception as e:
        if type(e).__name__ != "PatchDDMError": raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"docs: {len(info['pages'])} pages in {info['out']} ({info['seconds']} s: nbdev processing "
          f"{info['proc_seconds']} s, pages + mkdocs {info['render_seconds']} s)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
