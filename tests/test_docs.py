"""The documentation site (tools/build_docs.py): fast tests of the notebook → Markdown → HTML rendering (nbconvert's
MarkdownExporter, latex2mathml, mkdocs on a one-page site) and of the navigation; a slow full build.

`make docs-check` runs the slow one: `pytest -q -m slow tests/test_docs.py`.
"""
import base64, html, importlib.util, json, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    "tools/build_docs.py as a module (tools/ is not a package)."
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_docs"] = mod
    spec.loader.exec_module(mod)
    return mod


bd = _load()

# a 1×1 red PNG
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0000003"
    "010100c9fe92ef0000000049454e44ae426082")).decode()


def _nb(cells):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}


def _code(src, outputs=()):
    return {"cell_type": "code", "source": src, "metadata": {}, "outputs": list(outputs), "execution_count": None}


def _md(src):
    return {"cell_type": "markdown", "source": src, "metadata": {}}


def test_notebook_to_markdown():
    nb = _nb([
        {"cell_type": "raw", "metadata": {}, "source": "---\ntitle: patching\ndescription: Coordinate channels.\n"
                                                      "output-file: patching.html\n---\n"},
        _md("Intro with $x_t$ and `code $y$`."),
        _code("#| hide\nsecret = 1", [{"output_type": "stream", "name": "stdout", "text": "hidden\n"}]),
        _code("#| echo: false\n#| output: asis\nshow_doc(crop)", [{"output_type": "execute_result", "metadata": {},
              "execution_count": None, "data": {"text/markdown": "---\n\n### crop\n\n```python\ndef crop(x)\n```\n\n*Doc.*",
                                                "text/plain": "crop"}}]),
        _code("print('a')\nprint('b')", [{"output_type": "stream", "name": "stdout", "text": "a\n"},
                                          {"output_type": "stream", "name": "stdout", "text": "b\n"}]),
        _code("#| echo: false\nfig", [{"output_type": "display_data", "metadata": {},
                                       "data": {"image/png": PNG, "text/plain": "<Figure>"}}]),
        _code("df", [{"output_type": "execute_result", "metadata": {}, "execution_count": None,
                      "data": {"text/html": "<table class='dataframe'>\n\n<tr><td>1</td></tr></table>",
                               "text/plain": "df"}}]),
        _code("#| include: false\nx = 2"),
        _code("#| output: false\ny = 3", [{"output_type": "stream", "name": "stdout", "text": "not shown\n"}]),
    ])
    r = bd.notebook_to_markdown(nb, "patching")
    t = r.text
    assert t.startswith("# patching\n\nCoordinate channels.\n{: .lead }")
    assert "secret" not in t and "hidden" not in t                   # #| hide drops source and outputs
    assert "show_doc" not in t and "#|" not in t                      # echo: false hides the source, directives go
    assert "### crop { #crop .doc-symbol }" in t and r.symbols == ["crop"]
    assert re.search(r"```text\na\nb\n```", t)                        # consecutive streams merged
    assert "print('a')" in t
    (img, blob), = r.files.items()                                    # the figure, written beside the page
    assert blob == base64.b64decode(PNG) and img.startswith("patching_files/") and img.endswith(".png")
    assert f"![output]({img})" in t
    assert "<table class='dataframe'>\n<tr>" in t                     # HTML kept, blank lines removed
    assert "x = 2" not in t and "y = 3" in t and "not shown" not in t
    # post-processing: math outside code, links to notebooks, symbol cross-references
    m = bd.convert_math(t)
    assert re.search(r'<span class="math"><math [^>]*display="inline"><mrow><msub><mi>x</mi><mi>t</mi></msub>', m)
    assert "`code $y$`" in m                                           # no math inside code
    assert '<div class="math-display"><math' in bd.convert_math("$$a = b$$") and 'display="block"' in \
        bd.convert_math("$$a = b$$")
    assert bd.tex_to_mathml(r"\frac{a}{") is None and bd.tex_to_mathml(r"\unknowncmd{x}") is None
    assert "math-tex" in bd.convert_math(r"see $\unknowncmd{x}$")   # what latex2mathml cannot convert stays TeX
    assert "&#42;" in bd.tex_to_mathml(r"\text{a*b}")               # no Markdown emphasis inside MathML
    links = bd.rewrite_links("[a](01_patching.ipynb#crop) [b](https://x.org/a.ipynb) [c](../core.html)", "experiments/r.md",
                             {"01_patching.ipynb": "patching.md"}, {"patching.md", "core.md"})
    assert links == "[a](01_patching.ipynb#crop) [b](https://x.org/a.ipynb) [c](../core.md)"
    links = bd.rewrite_links("[a](../01_patching.ipynb#crop)", "experiments/r.md", {"01_patching.ipynb": "patching.md"}, set())
    assert links == "[a](../patching.md#crop)"
    targets = bd.link_targets({"patching.md": ["crop"], "data.md": ["unpad"], "model.md": ["unpad"]}, {})
    assert "unpad" not in targets and targets["model.unpad"] == "model.md#unpad"   # ambiguous bare names stay plain
    assert bd.linkify("use `crop` or `crop()`; [`crop`](x.md)\n```\n`crop`\n```\n", "index.md", targets) == \
        "use [`crop`](patching.md#crop) or [`crop()`](patching.md#crop); [`crop`](x.md)\n```\n`crop`\n```\n"


def test_page_html(tmp_path):
    "A notebook with TeX prose and a printed output becomes an HTML page with MathML and the output text."
    nb = _nb([
        {"cell_type": "raw", "metadata": {}, "source": "---\ntitle: diffusion\n---\n"},
        _md(r"The forward process: $x_t = \sqrt{\bar\alpha_t} x_0$ plus noise."),
        _code("print('noise level 0.25')", [{"output_type": "stream", "name": "stdout", "text": "noise level 0.25\n"}]),
    ])
    page = bd.notebook_to_markdown(nb, "diffusion")
    page.text = bd.convert_math(page.text)
    site = bd.Site(pages={"diffusion.md": page}, nav=[{"Diffusion": "diffusion.md"}], warnings=[])
    bd.write_stage(site, tmp_path / "stage", ROOT / "docs_src")
    bd.mkdocs_build(tmp_path / "stage", tmp_path / "site", site.nav, True, ROOT / "mkdocs.yml")
    text = (tmp_path / "site" / "diffusion.html").read_text()
    body = text[text.index("<article"):text.index("</article>")]
    assert re.search(r"<p>The forward process: <span class=\"math\"><math [^>]*>.*<msqrt>.*</math></span> plus noise", body)
    assert "<mi>x</mi><mn>0</mn>" in body and "\\sqrt" not in body and "$" not in body
    assert re.search(r'<div class="nb-output nb-stdout">\s*<div class="highlight"><pre><span></span><code>noise level 0\.25',
                     body)
    assert "print" in body                                            # the source is shown above its output


def _proc_nb(path: Path, title: str) -> None:
    "A processed-notebook stand-in: frontmatter with a title, one Markdown cell."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nb([{"cell_type": "raw", "metadata": {}, "source": f"---\ntitle: {title}\n---\n"},
                                    _md(f"About {title}.")])))


def test_nav_follows_files(tmp_path):
    "The navigation lists the notebooks found, numbered ones in numeric order; names starting with '_' are left out."
    nbs, proc = tmp_path / "nbs", tmp_path / "_proc"
    names = ["index", "paper_map", "reliability", "10_predict", "09_train", "00_core", "02_phantoms", "100_later",
             "_scratch", "experiments/report"]
    for name in names:
        _proc_nb(nbs / f"{name}.ipynb", Path(name).name)
        _proc_nb(proc / f"{name}.ipynb", Path(name).name)
    site = bd.assemble(proc, nbs, tmp_path / "no-results")
    assert site.nav == [{"Home": "index.md"},
                        {"API": [{"00_core": "00_core.md"}, {"02_phantoms": "02_phantoms.md"},
                                 {"09_train": "09_train.md"}, {"10_predict": "10_predict.md"},
                                 {"100_later": "100_later.md"}]},
                        {"Paper map": "paper_map.md"},
                        {"reliability": "reliability.md"},             # unnumbered pages (nbs/reliability.ipynb)
                        {"Experiments": [{"report": "experiments/report.md"}]},
                        {"Benchmarks": "benchmarks.md"}]
    assert "_scratch.md" not in site.pages and "About 09_train." in site.pages["09_train.md"].text


def test_benchmark_tables(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "skips.json").write_text(json.dumps({"name": "skips", "description": "Averaging vs concat.",
                                                "machine": {"cpu": "x", "cores": 2},
                                                "results": {"avg": {"mib": 415.9}, "concat": {"mib": 617.9}},
                                                "rows": [{"skip": "avg", "mib": 415.9}, {"skip": "concat", "mib": 617.9}]}))
    (res / "skips.csv").write_text("skip,mib\navg,415.9\nconcat,617.9\n")
    (res / "other.csv").write_text("a,b\n1,2\n")
    (res / "skips.png").write_bytes(base64.b64decode(PNG))
    r = bd.benchmarks_page(res)
    assert "## skips" in r.text and "Averaging vs concat." in r.text and "## other" in r.text
    assert "| avg | 415.9 |" in r.text and "| 1 | 2 |" in r.text
    assert "The rows are also in `skips.csv`" in r.text                       # the CSV copy of the rows is not repeated
    assert "machine.cpu" in r.text and list(r.files) == ["benchmarks_files/skips.png"]
    (res / "bad.json").write_text("{not json")
    with pytest.raises(Exception, match=r"bad\.json: not valid JSON"):
        bd.benchmarks_page(res)
    assert "No results yet" in bd.benchmarks_page(tmp_path / "missing").text


def test_refuses_foreign_output(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not a site built by tools/build_docs.py"):
        bd._check_out(tmp_path, overwrite=False)
    bd._check_out(tmp_path, overwrite=True)
    (tmp_path / bd.MARKER).write_text("")
    bd._check_out(tmp_path, overwrite=False)


@pytest.mark.slow
def test_build_site(tmp_path):
    out = tmp_path / "site"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--out", str(out),
                        "--keep-md", str(tmp_path / "md")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / bd.MARKER).exists() and (out / "search" / "search_index.json").exists()
    # a page for every notebook, the paper map and the benchmarks
    nbs = bd.source_notebooks(ROOT / "nbs")
    for nb in nbs:
        rel = nb.relative_to(ROOT / "nbs").as_posix()
        meta, _ = bd._frontmatter(json.loads((ROOT / "_proc" / rel).read_text()))
        page = out / bd.page_name(rel, meta).replace(".md", ".html")
        assert page.exists(), f"no page for nbs/{rel}"
    for name in ("index.html", "paper_map.html", "benchmarks.html"): assert (out / name).exists(), name
    # every image a page references exists; no page loads anything from the network
    for page in out.rglob("*.html"):
        text = page.read_text()
        for src in re.findall(r'<img [^>]*src="([^"]+)"', text):
            if src.startswith("data:"): continue
            assert (page.parent / src).exists(), f"{page.name}: missing image {src}"
        for src in re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?:[^"]+)"', text):
            pytest.fail(f"{page.name} loads {src} from the network")
    # the landing page shows the two commands; API pages carry show_doc anchors
    index = html.unescape(re.sub(r"<[^>]+>", "", (out / "index.html").read_text()))  # code is split into spans
    assert re.search(r"^\s*make demo\b", index, re.M) and re.search(r"^\s*make test\b", index, re.M)
    assert 'id="coord_channels"' in (out / "patching.html").read_text()
    assert (tmp_path / "md" / "paper_map.md").exists()
