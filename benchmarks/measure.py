"""One measurement per fresh subprocess: peak memory and seconds of a training step or an inference call.

The parent (`measure(spec)`) starts `python benchmarks/measure.py '<spec as JSON>'`; the child builds what the spec
names, primes it once on a small input (lazy imports, oneDNN set-up and optimizer state become part of the
baseline), then runs the measured call once and `warmup + repeats` more times for timing.

Memory on the CPU is the peak resident set size during the measured call (Linux `VmHWM`, reset through
`/proc/self/clear_refs` just before) minus the resident size right before it, with glibc told to serve and return
every block above 128 KiB straight from/to the OS, so resident memory follows live tensors. On CUDA it is
`torch.cuda.max_memory_allocated` minus the allocation right before the call. This is the procedure of
`patchddm.profiling.peak_memory`, extended to networks other than ours (MONAI) and to whole sampling calls.

Spec keys (all JSON):
    task      "train" (forward, ε-MSE loss, backward, AdamW step) | "forward" (no_grad) | "call" (a registered
              callable, see CALLS)
    model     {"kind": "ours", "cfg": UNetConfig dict, "fast": bool (oneDNN convolution, default true)} | {"kind": "monai", "kwargs": {...} or "match": UNetConfig dict,
              "mid_attention": bool}
              | {"kind": "run", "path": RUN_DIR, "which": "best"|"last"}
    size      [D, H, W]; batch; amp (null | "bf16" | "fp16"); device ("cpu" | "cuda"); threads; seed
    repeats, warmup   timing passes after the measured one: median wall and CPU (process) seconds of `repeats`
    time_budget   seconds (optional): when the measured call shows that warmup + repeats passes would take longer,
              the warm-up is dropped (the measured call was one) and repeats cut to what fits (at least 1)
    args      extra arguments for task "call"
    op_shares true: one more (untimed) pass under torch.profiler on the CPU → `op_shares` (the 8 largest shares of self
              CPU time by operator) and `convolution_share` (the share of operators named *conv*)
    root      the source tree whose `patchddm` the child imports (first on PYTHONPATH; default this repository's
              root): e.g. a `git worktree` of an older revision. The result's `patchddm_file` says which was used.
"""
from __future__ import annotations

import contextlib, gc, json, os, subprocess, sys, time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
TAG = "BENCH_RESULT "


class MeasureError(RuntimeError):
    "A measurement subprocess failed; the message is one line (the child's last error line)."


# ----------------------------------------------------------------------------------------------------------- parent
def measure(spec: dict, timeout: float = 900) -> dict:
    "Run one measurement described by `spec` in a fresh subprocess and return its result dict."
    env = dict(os.environ, **MALLOC_ENV)
    root = Path(spec.get("root") or ROOT)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(BENCH_DIR), *filter(None, [env.get("PYTHONPATH")])])
    if spec.get("threads"): env["OMP_NUM_THREADS"] = str(spec["threads"])
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], capture_output=True,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"measurement did not finish within {timeout} s: {spec.get('label', spec['task'])}") from None
    lines = [l for l in r.stdout.splitlines() if l.startswith(TAG)]
    if r.returncode or not lines:
        why = ("killed (out of memory?)" if r.returncode < 0 else
               (r.stderr.strip().splitlines() or ["no output"])[-1])
        raise MeasureError(f"{spec.get('label', spec['task'])}: {why}")
    return json.loads(lines[-1][len(TAG):])


# ------------------------------------------------------------------------------------------------------------ child
def _rss() -> dict[str, int]:
    "VmRSS and VmHWM (bytes) of this process."
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")): out[line[:5]] = int(line.split()[1]) * 1024
    return out


def _heap_for_timing() -> None:
    """After the memory pass: the heap settings the measured tree samples and trains with. A tree with
    `patchddm.core.tune_allocator` (its `segment` and `train` keep freed blocks up to `KEEP_FREED_BYTES`) gets those;
    an older one 32 MiB mmap / 128 MiB trim thresholds, close to where glibc's own dynamic thresholds settle."""
    try:
        import ctypes
        from patchddm import core
        keep = getattr(core, "KEEP_FREED_BYTES", None)
        mmap_threshold, trim_threshold = (keep, keep) if keep else (32 * 2**20, 128 * 2**20)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold); libc.mallopt(-1, trim_threshold)
    except (OSError, AttributeError):
        pass


def monai_unet(kwargs: dict, mid_attention: bool = True):
    "MONAI's DiffusionModelUNet(**kwargs); with mid_attention=False its forced middle self-attention is left out."
    import torch.nn as nn
    import monai.networks.nets.diffusion_model_unet as dmu

    if mid_attention: return dmu.DiffusionModelUNet(**kwargs)

    class MidNoAttention(nn.Module):
        "MONAI's AttnMidBlock without the attention: resnet_1 → resnet_2 (signature kept)."
        def __init__(self, spatial_dims, in_channels, temb_channels, norm_num_groups, norm_eps, **_):
            super().__init__()
            blk = lambda: dmu.DiffusionUNetResnetBlock(spatial_dims=spatial_dims, in_channels=in_channels,
                                                       out_channels=in_channels, temb_channels=temb_channels,
                                                       norm_num_groups=norm_num_groups, norm_eps=norm_eps)
            self.resnet_1, self.resnet_2 = blk(), blk()

        def forward(self, hidden_states, temb, context=None):
            return self.resnet_2(self.resnet_1(hidden_states, temb), temb)

    original = dmu.get_mid_block
    dmu.get_mid_block = MidNoAttention          # DiffusionModelUNet.__init__ looks the factory up by name
    try: return dmu.DiffusionModelUNet(**kwargs)
    finally: dmu.get_mid_block = original


def monai_kwargs(base: int, groups: int, cfg) -> dict:
    "DiffusionModelUNet keyword arguments with the multipliers, res blocks and channels of UNetConfig `cfg`, width `base`."
    ch = [base * m for m in cfg.mults]
    return dict(spatial_dims=3, in_channels=cfg.in_ch, out_channels=cfg.out_ch, num_res_blocks=cfg.num_res_blocks,
                channels=ch, attention_levels=[False] * len(ch), norm_num_groups=groups, with_conditioning=False,
                num_head_channels=ch[-1], resblock_updown=False)


def match_monai(cfg) -> tuple[dict, int, int]:
    "(kwargs, MONAI params, our params): the MONAI width (without mid attention) whose parameter count is closest to ours."
    import math
    from patchddm.model import UNet3D, count_params
    ours = count_params(UNet3D(cfg))
    per_group = max(1, cfg.base * cfg.mults[0] // cfg.groups)       # our channels per group at the first level
    best = None
    for b in range(1, 2 * cfg.base + 1):
        g = math.gcd(*[b * m for m in cfg.mults])
        groups = max(d for d in range(1, g + 1) if g % d == 0 and d <= max(1, b * cfg.mults[0] // per_group))
        kw = monai_kwargs(b, groups, cfg)
        n = count_params(monai_unet(kw, mid_attention=False))
        if best is None or abs(n - ours) < abs(best[1] - ours): best = (kw, n)
        if n > 1.5 * ours: break
    return best[0], best[1], ours


def build_model(m: dict, info: dict):
    "(model, in_ch, multiple) for a spec's model entry; facts worth reporting go into `info`."
    if m["kind"] == "ours":
        from patchddm.model import UNet3D, UNetConfig
        cfg = UNetConfig(**m["cfg"])
        return UNet3D(cfg), cfg.in_ch, cfg.multiple
    if m["kind"] == "monai":
        kw = m.get("kwargs")
        if kw is None:                              # match the parameter count of our config m["match"]
            from patchddm.model import UNetConfig
            kw, n, ours = match_monai(UNetConfig(**m["match"]))
            info.update(monai_kwargs=kw, params_ours=ours)
        net = monai_unet(kw, m.get("mid_attention", True))
        return net, kw["in_channels"], 2 ** (len(kw["channels"]) - 1)
    if m["kind"] == "run":
        from patchddm.modes import load_run
        run = load_run(checkpoint_of(m["path"]), device="cpu")
        return run.model, run.model.cfg.in_ch, run.model.cfg.multiple
    raise ValueError(f"unknown model kind {m['kind']!r}")


def checkpoint_of(run_dir: str | Path) -> Path:
    "RUN/best.pt, else RUN/last.pt (a run that never validated), else the path itself (a checkpoint file)."
    p = Path(run_dir)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file(): return p / name
    return p


def untrained(cfg_dict: dict, seed: int = 0):
    "UNet3D(cfg) from seed `seed` with its zero-initialised convolutions re-initialised, so its ε output is not 0."
    import torch
    from patchddm.model import UNet3D, UNetConfig
    torch.manual_seed(seed)
    model = UNet3D(UNetConfig(**cfg_dict))
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv3d) and not mod.weight.detach().any(): mod.reset_parameters()
    return model


def inference_call(spec: dict, dev):
    """(prime, run) for an inference measurement: one network evaluation ("eval") or a DDIM run ("ddim") on a whole
    volume, either at once (window None) or in overlapping window³ crops (`patchddm.predict.make_eps_fn`)."""
    import numpy as np
    import torch
    from patchddm.diffusion import Diffusion
    from patchddm.predict import make_eps_fn
    from patchddm.patching import add_coords
    from patchddm.modes import make_cond
    a = spec["args"]
    if a["model"]["kind"] == "run":
        from patchddm.data import PreparedDataset
        from patchddm.modes import load_run
        run = load_run(checkpoint_of(a["model"]["path"]), device=str(dev))
        model, diffusion, mode = run.model, run.diffusion, run.mode
        ds = PreparedDataset(a["prep"])
        image = torch.from_numpy(np.asarray(ds.load(a["case"])[0], dtype=np.float32))[None]
        cond = make_cond(image.to(dev) * 2 - 1, mode)
    else:
        model, diffusion = untrained(a["model"]["cfg"], spec.get("seed", 0)).to(dev), Diffusion()
        g = torch.Generator().manual_seed(spec.get("seed", 0))
        S = a["size"]
        cond = add_coords(torch.rand(1, 4, S, S, S, generator=g) * 2 - 1).to(dev)
    model.eval()
    m = model.cfg.multiple
    eps_fn = make_eps_fn(model, a.get("window"), a.get("overlap", 0.5))
    small = cond[..., :m, :m, :m].contiguous()
    shape = (1, 1, *cond.shape[2:])
    t = torch.full((1,), 500, dtype=torch.long, device=dev)
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dev)

    def prime():
        with torch.no_grad(): eps_fn(x_t[..., :m, :m, :m].contiguous(), t, small)

    last = {}

    def run():
        with torch.no_grad():
            if a["what"] == "eval": last["out"] = eps_fn(x_t, t, cond)
            else: last["out"] = diffusion.sample(eps_fn, cond, shape, solver="ddim", steps=a["steps"], seed=0,
                                                 progress=False)

    def finish() -> dict:
        "Save the last output (ε, or the sampled mask x0 > 0) where asked; describe the call."
        if a.get("save"):
            arr = last["out"][0, 0].float().cpu().numpy()
            np.save(a["save"], arr if a["what"] == "eval" else (arr > 0))
        return dict(volume=list(cond.shape[2:]), window=a.get("window"), what=a["what"])
    return prime, run, finish


CALLS = {"inference": inference_call}


def _call_fn(spec: dict, dev):
    "The (prime, run, finish) functions of task 'call': CALLS[spec['args']['name']](spec, device)."
    return CALLS[spec["args"]["name"]](spec, dev)


def child(spec: dict) -> dict:
    "Run the measurement of `spec` in this process (see the module docstring)."
    fast = spec.get("model", {}).get("fast", True)
    try: from patchddm.model import fast_conv
    except ImportError:                                             # a source tree (spec "root") without the switch
        if not fast: raise
        return _child(spec)
    with fast_conv(fast):                                           # False: our net on the reference Conv3d path
        return _child(spec)


def _child(spec: dict) -> dict:
    "The body of `child`."
    import resource
    import torch
    import torch.nn.functional as F

    if spec.get("threads"): torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    dev = torch.device(spec.get("device", "cpu"))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.get("amp"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    params, info = None, {}

    finish = None
    if spec["task"] == "call":
        prime, call, finish = _call_fn(spec, dev)
        def one():
            call(); sync()
    else:
        model, in_ch, mult = build_model(spec["model"], info)
        model = model.to(dev).train(spec["task"] == "train")
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if spec["task"] == "train" else None
        B = int(spec.get("batch", 1))
        t = torch.randint(0, 1000, (B,), device=dev)

        def step(x):
            with contextlib.ExitStack() as st:
                if opt is None: st.enter_context(torch.no_grad())
                if amp is not None: st.enter_context(torch.autocast(dev.type, dtype=amp))
                y = model(x, t)
            if opt is not None:
                F.mse_loss(y.float(), torch.zeros_like(y, dtype=torch.float32)).backward()
                opt.step(); opt.zero_grad(set_to_none=True)
            del y
            sync()

        x_small = torch.randn(B, in_ch, mult, mult, mult, device=dev)
        x = torch.randn(B, in_ch, *spec["size"], device=dev)
        prime, one = (lambda: step(x_small)), (lambda: step(x))

    prime()                                             # lazy set-up (and AdamW state) becomes part of the baseline
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev); base = torch.cuda.memory_allocated(dev)
        method = "torch.cuda.max_memory_allocated"
    else:
        method = "VmHWM" if os.environ.get("MALLOC_MMAP_THRESHOLD_") == MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"] \
            else "VmHWM (allocator not controlled)"
        try:
            with open("/proc/self/clear_refs", "w") as fh: fh.write("5")     # VmHWM := VmRSS
        except OSError: method = "ru_maxrss"
        base = _rss()["VmRSS"]
    t0 = time.perf_counter(); one(); first = time.perf_counter() - t0   # the measured call
    if dev.type == "cuda": total = torch.cuda.max_memory_allocated(dev)
    elif method == "ru_maxrss": total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else: total = _rss()["VmHWM"]
    if dev.type == "cpu": _heap_for_timing()
    times, cpu = [], []
    w, n = int(spec.get("warmup", 0)), int(spec.get("repeats", 1))
    if spec.get("time_budget") and first * (w + n) > float(spec["time_budget"]):
        w, n = 0, max(1, min(n, int(float(spec["time_budget"]) // max(first, 1e-9))))
    for _ in range(w + n):
        t0, c0 = time.perf_counter(), time.process_time()
        one()
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    shares = _op_shares(one) if spec.get("op_shares") and dev.type == "cpu" else {}
    med = lambda v: sorted(v)[len(v) // 2]
    res = dict(peak_bytes=total - base, baseline_bytes=base, seconds=med(times[w:]), seconds_all=times,
               cpu_seconds=med(cpu[w:]), cpu_seconds_all=cpu, seconds_first=first, params=params,
               threads=torch.get_num_threads(), method=method, warmup=w, repeats=n, **shares, **info)
    import patchddm
    res["patchddm_file"] = patchddm.__file__        # which source tree was measured (spec "root")
    if finish is not None: res["call"] = finish()
    return res


def _op_shares(one) -> dict:
    "Run `one` once under torch.profiler → shares of self CPU time: the 8 largest operators and all convolutions."
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof: one()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    share = {e.key: e.self_cpu_time_total / total for e in events}
    top = sorted(share.items(), key=lambda kv: -kv[1])[:8]
    return dict(op_shares={k: round(v, 4) for k, v in top},
                convolution_share=round(sum(v for k, v in share.items() if "conv" in k), 4))


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    print(TAG + json.dumps(child(json.loads(sys.argv[1]))), flush=True)
