"""Training end to end: every mode, overfitting, exact resume after SIGKILL, torchrun DDP, the two-device split, bad configs.

All runs use the `tiny` preset on the session's embedded phantoms (generated at 4 mm, see conftest.py) cached at
8 mm spacing (32³ after padding), so the whole file stays within a few minutes on two shared CPU cores."""
import json, os, shutil, signal, subprocess, sys, time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from patchddm.core import PatchDDMError
from patchddm.modes import MODES, load_checkpoint, load_run
from patchddm.train import TrainConfig, read_log, train

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).with_name("_train_worker.py"))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prep(phantom_data, tmp_path_factory) -> Path:
    "The session's 4 mm phantoms (conftest) cached at 8 mm spacing: 32³, split 3/1/1."
    from patchddm.data import PrepConfig, PreparedDataset, preprocess_dataset
    out = tmp_path_factory.mktemp("train-data") / "prep32"
    preprocess_dataset(phantom_data.raw, out, PrepConfig(size=32, spacing=8, seed=0), progress=False)
    ds = PreparedDataset(out)
    assert ds.size == 32 and ds.split("train") and ds.split("val")
    return out


def _cfg(prep, run, **kw) -> TrainConfig:
    base = dict(preset="tiny", steps=3, val_every=3, val_steps=2, val_cases=1, ckpt_every=3, log_every=1, seed=0)
    return TrainConfig(prep, run, **{**base, **kw})


def _spec(cfg: TrainConfig, **kw) -> str:
    return json.dumps({"config": cfg.to_dict(), **kw})


def _env(threads: int = 2) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    return env


def _same_weights(a: Path, b: Path) -> None:
    ka, kb = load_checkpoint(a), load_checkpoint(b)
    assert ka["step"] == kb["step"]
    for part in ("model", "ema"):
        if ka[part] is None: assert kb[part] is None; continue
        assert ka[part].keys() == kb[part].keys()
        for k in ka[part]: assert torch.equal(ka[part][k], kb[part][k]), (part, k)
    for sa, sb in zip(ka["optimizer"]["state"].values(), kb["optimizer"]["state"].values()):
        for k in sa: assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_trains_and_checkpoints(prep, tmp_path, mode):
    patch = 16 if mode.startswith("patchddm") else None
    s = train(_cfg(prep, tmp_path / mode, mode=mode, patch=patch), progress=False)
    assert s["steps_run"] == 3 and 0 <= s["best_val_dice"] <= 1 and s["final_loss"] > 0
    for name in ("config.json", "last.pt", "best.pt", "log.csv", "summary.json"):
        assert (tmp_path / mode / name).is_file(), name
    ck = load_checkpoint(tmp_path / mode / "last.pt")
    assert ck["step"] == 3 and ck["train_config"]["mode"] == mode and ck["model_config"]["in_ch"] == MODES[mode]
    run = load_run(tmp_path / mode, device="cpu")
    assert run.mode == mode and run.model.cfg.in_ch == MODES[mode]


def test_loss_goes_down_when_overfitting_one_case(prep, tmp_path):
    one = tmp_path / "one-case"
    one.mkdir()
    shutil.copy(prep / "prep.json", one / "prep.json")
    (one / "cases").symlink_to(prep / "cases")
    splits = json.loads((prep / "splits.json").read_text())
    case = splits["train"][0]
    (one / "splits.json").write_text(json.dumps({**splits, "train": [case], "val": [case]}))
    s = train(_cfg(one, tmp_path / "run", patch=16, steps=40, val_every=0, ckpt_every=40, log_every=10),
              progress=False)
    loss = read_log(tmp_path / "run")["loss"].tolist()       # mean loss of steps 1-10, 11-20, 21-30, 31-40
    assert len(loss) == 4 and s["final_loss"] == pytest.approx(loss[-1], rel=1e-5)
    assert loss[-1] < 0.6 * loss[0], loss


def test_resume_after_sigkill_is_bit_identical(prep, tmp_path):
    full = _cfg(prep, tmp_path / "full", steps=8, ckpt_every=2, val_every=4, ema=0.9, grad_clip=1.0, workers=1,
                lr_schedule="cosine", warmup=3, prediction="v")
    killed = replace(full, run_dir=tmp_path / "killed")
    r = subprocess.run([sys.executable, WORKER, _spec(full)], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen([sys.executable, WORKER, _spec(killed)], env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    last = killed.run_dir / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and p.poll() is None and time.time() < deadline: time.sleep(0.02)
    assert p.poll() is None, f"the run ended before it could be killed: {p.stderr.read()}"
    p.send_signal(signal.SIGKILL); p.wait(timeout=30)
    step = load_checkpoint(last)["step"]
    assert p.returncode == -signal.SIGKILL and 2 <= step < 8, step
    r = subprocess.run([sys.executable, WORKER, _spec(killed, resume=True)], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _same_weights(full.run_dir / "last.pt", killed.run_dir / "last.pt")
    _same_weights(full.run_dir / "best.pt", killed.run_dir / "best.pt")
    log_full, log_killed = read_log(full.run_dir), read_log(killed.run_dir)
    assert log_full["step"].tolist() == log_killed["step"].tolist()
    assert log_full["loss"].dropna().tolist() == log_killed["loss"].dropna().tolist()
    ck = load_checkpoint(killed.run_dir / "last.pt")       # the EMA: a plain state dict of the network ...
    assert list(ck["ema"]) == list(ck["model"]) and any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])
    run = load_run(killed.run_dir, which="last", device="cpu")       # ... that load_run puts into a UNet3D
    assert run.ema and all(torch.equal(v, ck["ema"][k]) for k, v in run.model.state_dict().items())


def test_torchrun_two_ranks_hold_identical_weights(prep, tmp_path):
    cfg = _cfg(prep, tmp_path / "ddp", steps=4, val_every=4, ckpt_every=2, patch=16, ema=0.9)
    r = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533", WORKER,
                        _spec(cfg, summary_dir=str(tmp_path / "summaries"))],
                       env=_env(1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / "summaries" / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (s0["rank"], s1["rank"], s0["world_size"]) == (0, 1, 2)
    assert s0["param_sha"] == s1["param_sha"]
    assert s0["final_loss"] == s1["final_loss"]          # loss is averaged over ranks
    run = load_run(tmp_path / "ddp", which="last", device="cpu", use_ema=False)
    from patchddm.train import param_sha
    assert param_sha(run.model) == s0["param_sha"]       # rank 0's checkpoint = the weights both ranks hold
    assert load_run(tmp_path / "ddp", which="last", device="cpu").ema    # and the EMA kept beside them
    assert s0["best_val_dice"] is not None and s1["best_val_dice"] is None    # validation on rank 0 only
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv", "summary.json", "tb"]


def test_fullres_split_over_cpu_cpu_matches_unsplit(prep, tmp_path):
    cfg = _cfg(prep, tmp_path / "one", mode="fullres", steps=2, val_every=0, amp="none")
    a = train(cfg, progress=False)
    b = train(replace(cfg, run_dir=tmp_path / "two", devices="cpu,cpu"), progress=False)
    assert read_log(tmp_path / "one")["loss"].tolist() == read_log(tmp_path / "two")["loss"].tolist()
    assert a["param_sha"] == b["param_sha"]


@pytest.mark.parametrize("change, message", [
    (dict(patch=64), "patch 64: is larger than the volume edge 32"),
    (dict(mode="quarterres"), "mode 'quarterres': unknown mode"),
    (dict(prep_dir="MISSING"), "preprocessed cache not found"),
    (dict(patch=18), "must be a multiple of 4"),
    (dict(prediction="score"), "prediction 'score': unknown"),
    (dict(lr_schedule="step"), "lr_schedule 'step': unknown"),
])
def test_bad_config_is_one_line_error(prep, tmp_path, change, message):
    if change.get("prep_dir") == "MISSING": prep, change = tmp_path / "no-cache", {}
    cfg = _cfg(prep, tmp_path / "run", **change)
    r = subprocess.run([sys.executable, WORKER, _spec(cfg)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()                # nothing written before the check
    with pytest.raises(PatchDDMError, match=message.split(": ")[-1]): train(cfg, progress=False)


def test_cli_train(prep, tmp_path):
    "`patchddm train` as wired in the CLI: trains, then refuses the now non-empty run folder with one line."
    args = [sys.executable, "-m", "patchddm.cli", "train", str(prep), str(tmp_path / "run"), "--mode", "patchddm",
            "--preset", "tiny", "--patch", "16", "--steps", "2", "--val-every", "2", "--val-steps", "2", "--seed", "0",
            "--prediction", "v", "--lr-schedule", "cosine", "--warmup", "1"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] == 2 and ck["diffusion_config"]["prediction"] == "v" and ck["train_config"]["lr_schedule"] == "cosine"
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
