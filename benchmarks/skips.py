"""Averaging vs concatenating skips: training memory at equal width, and the width of the averaging U-Net that fits
in the concatenating one's memory (paper: 1.61×).

The measuring is `model_memory.py` (one fresh subprocess per width, bracket + bisection over integer widths); this
module runs it, then adds the machine record, a CSV and a figure in the common benchmark format.

    python benchmarks/skips.py --out benchmarks/results
"""
from __future__ import annotations

import json, sys, tempfile, time
from pathlib import Path

from patchddm.core import PatchDDMError

import model_memory
import report

NAME = "skips"
PAPER_WIDTH_RATIO = 1.61
QUICK = dict(size=32, base=1, mults=[1, 2, 2], res_blocks=1)
FULL = dict(size=64, base=8, mults=[1, 3, 4, 4, 4, 4, 4], res_blocks=2)


def run(out: Path, quick: bool = False, overwrite: bool = False, threads: int = 1, **overrides) -> dict:
    "Run model_memory.py with the quick or full (paper architecture) setting and write the results."
    report.check_outputs(out, NAME, overwrite)
    p = dict(QUICK if quick else FULL, **{k: v for k, v in overrides.items() if v is not None})
    machine, t0 = report.machine_info("cpu"), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        raw_p = Path(tmp) / "model_memory.json"
        argv = ["--out", str(raw_p), "--size", str(p["size"]), "--base", str(p["base"]),
                "--mults", *map(str, p["mults"]), "--res-blocks", str(p["res_blocks"]), "--threads", str(threads)]
        if model_memory.main(argv) != 0:
            raise PatchDDMError("model_memory.py", f"failed with arguments {' '.join(argv)}")
        raw = json.loads(raw_p.read_text())
    rows = [dict(m, params_M=round(m["params"] / 1e6, 3)) for m in raw["measurements"]]
    width = raw["width_ratio_interpolated"]
    results = dict(memory_ratio_concat_over_avg=raw["memory_ratio_concat_over_avg"],
                   peak_MiB_equal_width=raw["peak_MiB"], reference_base=raw["reference_base"],
                   widest_avg_base_within_concat_memory=raw["widest_avg_base_within_concat_memory"],
                   width_ratio_integer=raw["width_ratio_integer"], width_ratio_interpolated=width,
                   paper_width_ratio=PAPER_WIDTH_RATIO, width_verdict=report.verdict(width, 1.5, "higher"))
    for k in ("tensor_peak_MiB", "tensor_memory_ratio_concat_over_avg", "width_ratio_interpolated_tensors"):
        if k in raw: results[k] = raw[k]           # live-tensor peaks (profiler), where model_memory.py records them
    setup = dict(raw["setup"], quick=quick, tool="benchmarks/model_memory.py",
                 step="forward + loss + backward (patchddm.profiling.peak_memory)")
    return report.write_result(out, NAME, __doc__.split("\n\n")[0].replace("\n", " "), machine, setup, results,
                               rows, _plot(raw), targets=dict(width_ratio_min=1.5, paper_width_ratio=PAPER_WIDTH_RATIO),
                               seconds_total=time.time() - t0)


def _plot(raw: dict):
    "Peak memory against width: averaging curve, concatenating reference point and its memory line."
    def plot(df):
        sns = report.style()
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        avg = df[df.skip == "avg"].sort_values("base")
        cat = df[df.skip == "concat"]
        sns.lineplot(avg, x="base", y="peak_MiB", marker="o", ax=ax, label="averaging skips (resident)")
        ax.scatter(cat.base, cat.peak_MiB, color="C3", zorder=3, label="concatenating skips (resident)")
        if "tensor_peak_MiB" in df and df.tensor_peak_MiB.notna().all():
            sns.lineplot(avg, x="base", y="tensor_peak_MiB", marker=".", ax=ax, color="C0", ls="--", lw=0.8,
                         label="averaging (live tensors)")
            ax.scatter(cat.base, cat.tensor_peak_MiB, color="C3", marker="x", zorder=3, label="concatenating (tensors)")
        ax.axhline(float(cat.peak_MiB.iloc[0]), color="C3", ls="--", lw=0.8)
        b = raw["reference_base"] * raw["width_ratio_interpolated"]
        ax.axvline(b, color="0.4", ls=":", lw=0.8)
        ax.text(b, ax.get_ylim()[0], f" ×{raw['width_ratio_interpolated']:.2f} (paper ×1.61)", fontsize=7,
                va="bottom", ha="left")
        s = raw["setup"]
        ax.set(xlabel="base width", ylabel="peak training memory above baseline (MiB)",
               title=f"{s['size']}³, mults {tuple(s['mults'])}, {s['res_blocks']} res blocks, fp32, seed 0")
        ax.title.set_fontsize(8); ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    return plot


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, f"smoke run: {QUICK}", device=False)
    ap.add_argument("--size", type=int); ap.add_argument("--base", type=int)
    ap.add_argument("--mults", type=int, nargs="+"); ap.add_argument("--res-blocks", type=int)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        run(a.out, a.quick, a.overwrite, a.threads, size=a.size, base=a.base, mults=a.mults, res_blocks=a.res_blocks)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
