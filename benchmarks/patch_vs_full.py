"""PatchDDM vs FullRes training: peak memory and time of one training step on a P³ patch (8 input channels: four
images, three coordinate channels, x_t) against the whole (2P)³ volume (5 channels, no coordinates), same network.

Paper (Table 1, A100, P = 128): memory 10.6 / 78.5 GB = 0.135, time 0.340 / 2.12 s = 0.16. The voxel ratio is
1/8 = 0.125. Each point is `patchddm.profiling.peak_memory` (fresh subprocess; forward + ε-MSE-like loss + backward,
batch 1, fp32): peak memory above the process baseline (activations and gradients), and the median time of
`repeats` steps. `train_total_MiB` adds the weights and AdamW's two moments (12 bytes per parameter), which a real
step also holds. Measured, never asserted.

    python benchmarks/patch_vs_full.py --out benchmarks/results
"""
from __future__ import annotations

import sys, time
from pathlib import Path

from patchddm.core import PatchDDMError, pick_device
from patchddm.profiling import peak_memory
from patchddm.model import preset_config

import report

NAME = "patch_vs_full"
PAPER = dict(memory_ratio=0.135, time_ratio=0.16)


def run(out: Path, quick: bool = False, overwrite: bool = False, device: str = "auto", preset: str = "small",
        patches: list[int] | None = None, repeats: int | None = None, threads: int | None = 1) -> dict:
    "Measure patch P vs full 2P for each P in `patches` and write the results; return the JSON dict."
    report.check_outputs(out, NAME, overwrite)
    device = str(pick_device(device))
    if patches is None:
        patches = [16] if quick else ([64, 128] if device.startswith("cuda") else [32, 48])
    repeats = repeats or (1 if quick else 3)
    machine, t0, rows, results = report.machine_info(device), time.time(), [], {}
    for P in patches:
        pair = {}
        for mode, in_ch, size in (("patchddm", 8, P), ("fullres", 5, 2 * P)):
            cfg = preset_config(preset, in_ch=in_ch)
            r = peak_memory(cfg, size, train=True, device=device, repeats=repeats, warmup=0 if quick else 1,
                            threads=threads if device == "cpu" else None)
            state = 12 * r["params"]
            row = dict(P=P, mode=mode, input=f"{in_ch}×{size}³", in_ch=in_ch, size=size, params=r["params"],
                       peak_MiB=round(r["peak_bytes"] / report.MiB, 1),
                       train_total_MiB=round((r["peak_bytes"] + state) / report.MiB, 1),
                       seconds=round(r["seconds_per_eval"], 4), seconds_all=[round(s, 4) for s in r["seconds"]],
                       cpu_seconds=_round(r.get("cpu_seconds_per_eval")), method=r["method"])
            rows.append(row); pair[mode] = row
            print(f"  P={P:3d} {mode:8s} {row['input']:>8s}: peak {row['peak_MiB']:8.1f} MiB, "
                  f"{row['seconds']:.3f} s/step", flush=True)
        p, f = pair["patchddm"], pair["fullres"]
        results[f"P{P}"] = dict(
            memory_ratio=report.ratio(p["peak_MiB"], f["peak_MiB"]),
            memory_ratio_with_state=report.ratio(p["train_total_MiB"], f["train_total_MiB"]),
            time_ratio=report.ratio(p["seconds"], f["seconds"]),
            cpu_time_ratio=report.ratio(p["cpu_seconds"], f["cpu_seconds"]),
            memory_verdict=report.verdict(report.ratio(p["peak_MiB"], f["peak_MiB"]), PAPER["memory_ratio"], "lower"),
            time_verdict=report.verdict(report.ratio(p["seconds"], f["seconds"]), PAPER["time_ratio"], "lower"))
        print(f"  P={P}: memory ratio {results[f'P{P}']['memory_ratio']}, time ratio {results[f'P{P}']['time_ratio']}")
    setup = dict(preset=preset, model=preset_config(preset).to_dict(), patches=patches, device=device, batch=1,
                 dtype="float32", repeats=repeats, threads=threads, seed=0, quick=quick,
                 step="forward + loss + backward (patchddm.profiling.peak_memory)")
    notes = ["time ratios on a shared CPU: both sides of a ratio ran back to back; absolute seconds are not "
             "comparable across runs"] if device == "cpu" else []
    return report.write_result(out, NAME, __doc__.split("\n\n")[0].replace("\n", " "), machine, setup, results,
                               rows, _plot, targets=dict(memory_ratio_max=PAPER["memory_ratio"],
                                                         time_ratio_max=PAPER["time_ratio"]),
                               seconds_total=time.time() - t0, notes=notes)


def _round(v: float | None, digits: int = 4) -> float | None:
    "round(v, digits), None stays None."
    return None if v is None else round(v, digits)


def _plot(df):
    "Two panels: peak memory and seconds per step, patch vs full, per P."
    sns = report.style()
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0))
    df = df.assign(label=[f"P={p}" for p in df.P])
    for ax, col, title in ((axes[0], "peak_MiB", "peak memory above baseline (MiB)"),
                           (axes[1], "seconds", "seconds per training step (median)")):
        sns.barplot(df, x="label", y=col, hue="mode", ax=ax, palette="deep")
        ax.set(xlabel="", ylabel="", title=title)
        for c in ax.containers: ax.bar_label(c, fmt="%.3g", fontsize=7)
    fig.suptitle("PatchDDM (P³, 8 ch) vs FullRes ((2P)³, 5 ch), same network, seed 0", fontsize=9)
    report.shared_legend(fig, axes)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, "smoke run: P = 16, one timed step")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--patches", type=int, nargs="+", help="patch edges P (default: CPU 32 48, GPU 64 128)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default 1: a shared CPU)")
    a = ap.parse_args(argv)
    try:
        run(a.out, a.quick, a.overwrite, a.device, a.preset, a.patches, a.repeats, a.threads)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
