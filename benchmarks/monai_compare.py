"""Against MONAI's DiffusionModelUNet: training-step time and peak memory of our U-Net and MONAI's at a matched
parameter count (±10 %), same input size and channels, as ratios ours / MONAI.

MONAI's net is `DiffusionModelUNet(spatial_dims=3, with_conditioning=False, attention_levels=(False,)*levels)`
with our channel multipliers and residual blocks per level; its base width (and GroupNorm groups, keeping our
channels per group) is the one whose parameter count is closest to ours. MONAI always builds a self-attention
block in the middle (`get_mid_block` returns `AttnMidBlock` without an option to leave attention out), and that
block needs the `einops` package. We measure MONAI with that attention left out (its mid block reduced to its two
residual blocks, the same as ours) and, where `einops` is installed, also as shipped. Both nets: fp32, batch 1,
AdamW step included, one fresh subprocess per point (`measure.py`). Measured, never asserted.

    python benchmarks/monai_compare.py --out benchmarks/results
"""
from __future__ import annotations

import importlib.util, sys, time
from pathlib import Path

from patchddm.core import PatchDDMError, pick_device
from patchddm.model import preset_config

import measure as M
import report

NAME = "monai_compare"
TARGET_TIME_RATIO = 1.0


def run(out: Path, quick: bool = False, overwrite: bool = False, device: str = "auto", preset: str = "small",
        sizes: list[int] | None = None, repeats: int | None = None, threads: int | None = 1) -> dict:
    "Measure ours vs MONAI at each size and write the results; return the JSON dict."
    report.check_outputs(out, NAME, overwrite)
    device = str(pick_device(device))
    sizes = sizes or ([16] if quick else ([64, 96] if device.startswith("cuda") else [32, 48]))
    repeats = repeats or (1 if quick else 3)
    machine, t0 = report.machine_info(device), time.time()
    cfg = preset_config(preset)
    bad = [s for s in sizes if s < 1 or s % cfg.multiple]
    if bad: raise PatchDDMError(f"sizes {bad}", f"must be positive multiples of {cfg.multiple} (preset {preset})")
    has_einops = importlib.util.find_spec("einops") is not None
    # MONAI's width is matched inside its first measuring subprocess (importing MONAI costs seconds)
    variants = [("MONAI, no mid attention", dict(kind="monai", match=cfg.to_dict(), mid_attention=False)),
                ("ours", dict(kind="ours", cfg=cfg.to_dict()))]
    if not quick: variants.append(("ours, reference conv", dict(kind="ours", cfg=cfg.to_dict(), fast=False)))
    if has_einops: variants.append(("MONAI as shipped", dict(kind="monai", mid_attention=True)))
    rows, results, kw, n_monai, n_ours = [], {}, None, None, None
    for size in sizes:
        got = {}
        for label, model in variants:
            if model["kind"] == "monai" and kw is not None: model = dict(model, kwargs=kw, match=None)
            spec = dict(task="train", model=model, size=[size] * 3, batch=1, device=device, seed=0,
                        repeats=repeats, warmup=0 if quick else 1, threads=threads if device == "cpu" else None,
                        label=f"{label} {size}³")
            try:
                r = M.measure(spec)
            except M.MeasureError as err:
                raise PatchDDMError(NAME, str(err)) from None
            row = dict(size=size, net=label, params=r["params"], peak_MiB=round(r["peak_bytes"] / report.MiB, 1),
                       seconds=round(r["seconds"], 4), seconds_all=[round(s, 4) for s in r["seconds_all"]],
                       cpu_seconds=round(r["cpu_seconds"], 4), method=r["method"])
            rows.append(row); got[label] = row
            if "monai_kwargs" in r: kw, n_monai, n_ours = r["monai_kwargs"], r["params"], r["params_ours"]
            print(f"  {size:3d}³ {label:24s} {r['params'] / 1e6:5.2f} M params: peak {row['peak_MiB']:8.1f} MiB, "
                  f"{row['seconds']:.3f} s/step", flush=True)
        ref = got["MONAI, no mid attention"]
        res = dict(memory_ratio=report.ratio(got["ours"]["peak_MiB"], ref["peak_MiB"]),
                   time_ratio=report.ratio(got["ours"]["seconds"], ref["seconds"]),
                   cpu_time_ratio=report.ratio(got["ours"]["cpu_seconds"], ref["cpu_seconds"]))
        res["time_verdict"] = report.verdict(res["time_ratio"], TARGET_TIME_RATIO, "lower")
        if "ours, reference conv" in got:
            res["time_ratio_reference_conv"] = report.ratio(got["ours, reference conv"]["seconds"], ref["seconds"])
            res["cpu_time_ratio_reference_conv"] = report.ratio(got["ours, reference conv"]["cpu_seconds"],
                                                                ref["cpu_seconds"])
            res["memory_ratio_reference_conv"] = report.ratio(got["ours, reference conv"]["peak_MiB"], ref["peak_MiB"])
        if "MONAI as shipped" in got:
            res["memory_ratio_vs_shipped"] = report.ratio(got["ours"]["peak_MiB"], got["MONAI as shipped"]["peak_MiB"])
            res["time_ratio_vs_shipped"] = report.ratio(got["ours"]["seconds"], got["MONAI as shipped"]["seconds"])
        results[f"{size}"] = res
        print(f"  {size}³: ours/MONAI memory {res['memory_ratio']}, time {res['time_ratio']}")
    setup = dict(preset=preset, ours=cfg.to_dict(), monai=kw, params=dict(ours=n_ours, monai=n_monai,
                 ratio=report.ratio(n_monai, n_ours), within_10_percent=abs(n_monai / n_ours - 1) <= 0.1), sizes=sizes, device=device, batch=1, dtype="float32",
                 repeats=repeats, threads=threads, seed=0, quick=quick, einops_installed=has_einops,
                 step="forward + MSE loss + backward + AdamW step (benchmarks/measure.py)")
    notes = ["MONAI 1.x always builds a middle self-attention block (AttnMidBlock); there is no argument to turn it "
             "off. The comparison replaces it by its two residual blocks (the same mid block as ours)."]
    if not has_einops:
        notes.append("einops is not installed: MONAI's shipped net (with the forced mid attention) cannot be built "
                     "and was not measured.")
    if device == "cpu":
        notes.append("shared CPU: the nets of one size ran back to back; compare ratios, not absolute seconds")
    return report.write_result(out, NAME, __doc__.split("\n\n")[0].replace("\n", " "), machine, setup, results,
                               rows, _plot, targets=dict(time_ratio_max=TARGET_TIME_RATIO),
                               seconds_total=time.time() - t0, notes=notes)


def _plot(df):
    "Memory and seconds per training step for each net and input size."
    sns = report.style()
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.1))
    df = df.assign(input=[f"{s}³" for s in df["size"]])
    order = [n for n in ("ours", "ours, reference conv", "MONAI, no mid attention", "MONAI as shipped")
             if n in set(df.net)]
    for ax, col, title in ((axes[0], "peak_MiB", "peak memory above baseline (MiB)"),
                           (axes[1], "seconds", "seconds per training step (median)")):
        sns.barplot(df, x="input", y=col, hue="net", hue_order=order, ax=ax, palette="deep")
        ax.set(xlabel="input (8 channels)", ylabel="", title=title)
        for c in ax.containers: ax.bar_label(c, fmt="%.3g", fontsize=6)
    fig.suptitle("our U-Net vs MONAI DiffusionModelUNet at matched parameters (fp32, batch 1, seed 0)", fontsize=9)
    report.shared_legend(fig, axes)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, "smoke run: 16³, one timed step")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--sizes", type=int, nargs="+", help="cube edges (default: CPU 32 48, GPU 64 96)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        run(a.out, a.quick, a.overwrite, a.device, a.preset, a.sizes, a.repeats, a.threads)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
