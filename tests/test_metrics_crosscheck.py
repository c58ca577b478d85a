"""`patchddm.metrics` against the official BraTS evaluation package, `brats-evaluation` (test-only: AGPL, never imported
by patchddm; installed by the `crosscheck` extra, skipped when absent).

brats-evaluation 0.0.10 (the BraTS 2025 package) wraps panoptica: 26-connected components matched one-to-one
by maximum bipartite matching on Dice, no dilation, no minimum size; its HD95 pools both directions. The BraTS
2023 lesion-wise rules that patchddm implements differ on purpose (see nbs/06_metrics.ipynb, "Differences from
the official package"), so the tests check
1. legacy Dice per region on random multi-lesion label maps with anisotropic voxels: equal to 1e-6;
2. HD95: patchddm's pooled variant equals panoptica's to 1e-3 mm (same surfaces and distances; panoptica's
   global HD95 ignores the voxel spacing, its per-lesion HD95 uses it), the BraTS 2021-2023 directed one is never
   smaller;
3. lesion-wise where both rule sets coincide (lesions far apart, each prediction component on one lesion, no small
   lesion): counts, every lesion's Dice (1e-6) and pooled HD95 (1e-3 mm), and lesion-wise Dice = sq_dsc · TP / (TP + FN + FP);
4. one small case per rule that makes them differ, asserting both sides' values.
The 2023 rules themselves are checked against a direct transcription in the notebook.
"""
import contextlib, io, warnings

import numpy as np
import pytest

from patchddm.metrics import (LESION_RULES, brats_metrics, components, dice, hd95, lesionwise_scores, match_lesions,
                              region_masks, truth_lesions)

pytest.importorskip("brats_evaluation")
pytest.importorskip("panoptica")

SPACING = (0.9, 1.3, 2.5)
REG = {"WT": "wt", "TC": "tc", "ET": "et"}


@pytest.fixture(scope="module")
def official():
    "panoptica's evaluator with brats-evaluation's glioma config (labels 1 NETC, 2 SNFH, 3 ET), quiet."
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator
    from panoptica.utils.citation_reminder import disable_citation_reminder
    disable_citation_reminder()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = Panoptica_Evaluator.load_from_config(str(config_path("gli")))

    def run(pred, truth, spacing=SPACING):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            res = ev.evaluate(pred.astype(np.uint8), truth.astype(np.uint8), voxelspacing=tuple(spacing), verbose=False)
        return {k: r.to_dict(True) for k, r in res.items()}
    return run


def _tumour(lab: np.ndarray, centre, radii, grid) -> None:
    "Paint an ellipsoidal tumour (oedema 2 ⊃ core 1 ⊃ enhancing 3) into a BraTS 2023 label map."
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    lab[d <= 1] = 2
    lab[d <= 0.45] = 1
    lab[(d <= 0.3) & (d > 0.1)] = 3


def random_case(seed: int, shape=(48, 44, 28)) -> tuple[np.ndarray, np.ndarray]:
    "Random multi-lesion truth and prediction label maps (BraTS 2023 labels): shifted, resized, missed and false tumours."
    r = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for _ in range(r.integers(2, 5)):
        c, rad = r.uniform(5, np.array(shape) - 5), r.uniform(2, 7, 3) / np.array([1, 1, 2])
        _tumour(truth, c, rad, grid)
        if r.random() < 0.85: _tumour(pred, c + r.normal(0, 1, 3), rad * r.uniform(0.7, 1.3, 3), grid)
    for _ in range(r.integers(0, 3)): _tumour(pred, r.uniform(3, np.array(shape) - 3), r.uniform(1, 3, 3), grid)
    return pred, truth


@pytest.mark.parametrize("seed", range(8))
def test_legacy_dice_and_hd95_per_region(official, seed):
    pred, truth = random_case(seed)
    ours, theirs = brats_metrics(pred, truth, SPACING, labels="brats2023"), official(pred, truth)
    p, t = region_masks(pred, "brats2023", kind="labels"), region_masks(truth, "brats2023", kind="labels")
    for r, key in REG.items():
        if not (p[r].any() and t[r].any()): continue                       # empty masks: see test_empty_masks
        assert abs(ours[r]["dice"] - theirs[key]["global_bin_dsc"]) < 1e-6, r
        # panoptica 2.1.7 computes its global ("legacy") metrics without the voxel spacing (its instance metrics
        # use it): its global HD95 is patchddm's pooled HD95 on the unit grid, whatever spacing is passed
        assert abs(hd95(p[r], t[r], 1.0, pooled=True) - theirs[key]["global_bin_hd95"]) < 1e-3, r
        pooled = hd95(p[r], t[r], SPACING, pooled=True)
        assert ours[r]["hd95"] >= pooled - 1e-9, r                        # directed (BraTS 2021-2023) ≥ pooled


def separated_case(seed: int, shape=(60, 60, 24)) -> tuple[np.ndarray, np.ndarray]:
    "Binary truth lesions on a coarse grid (far apart, all > 50 mm³), each predicted, missed or shifted; FPs far away."
    r = np.random.default_rng(seed)
    truth, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    cells = [(x, y) for x in (4, 22, 40) for y in (4, 22, 40)]
    order = r.permutation(len(cells))
    for i in order[:5]:                                                     # truth lesions, some predicted
        x, y = cells[i]
        sx, sy, sz = r.integers(5, 9, 3)
        z = int(r.integers(2, 10))
        truth[x:x + sx, y:y + sy, z:z + sz // 2 + 2] = True
        if r.random() < 0.8:
            dx, dy = r.integers(-1, 2, 2)
            pred[x + dx:x + dx + sx + int(r.integers(-2, 2)), y + dy:y + dy + sy, z:z + sz // 2 + 1] = True
    for i in order[5:5 + int(r.integers(0, 3))]:                            # false positives in empty cells
        x, y = cells[i]
        pred[x + 3:x + 7, y + 3:y + 6, 8:12] = True
    return pred, truth


@pytest.mark.parametrize("seed", range(6))
def test_lesionwise_where_the_rules_coincide(official, seed):
    pred, truth = separated_case(seed)
    rows = match_lesions(pred, truth, SPACING, "glioma")
    assert all(r["counted"] for r in rows) and all(len(r["pred_components"]) <= 1 for r in rows)
    ours = lesionwise_scores(pred, truth, SPACING, "glioma")
    theirs = official(pred.astype(np.uint8) * 2, truth.astype(np.uint8) * 2)["wt"]   # label 2 alone: WT
    assert (ours["lesion_tp"], ours["lesion_fn"], ours["lesion_fp"]) == (theirs["tp"], theirs["fn"], theirs["fp"])
    plab, tl = components(pred)[0], truth_lesions(truth, LESION_RULES["glioma"].dilation)[0]
    mine = []
    for r in rows:
        if r["kind"] != "truth" or not r["pred_components"]: continue
        pm, gt = np.isin(plab, r["pred_components"]), tl == r["lesion"]
        mine.append((r["voxels"], r["dice"], hd95(pm, gt, SPACING, pooled=True)))
    ref = [(i["voxel_count"], i["sq_dsc"], i["sq_hd95"]) for i in theirs["reference_instances"] if i["is_matched"]]
    for a, b in zip(sorted(mine), sorted(ref)):
        assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-6 and abs(a[2] - b[2]) < 1e-3, (a, b)
    assert len(mine) == len(ref)
    if theirs["tp"]:
        expected = theirs["sq_dsc"] * theirs["tp"] / (theirs["tp"] + theirs["fn"] + theirs["fp"])
        assert abs(ours["lesion_dice"] - expected) < 1e-6


def _box(shape, *sl) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in sl)] = True
    return m


def test_each_difference_in_the_lesion_rules(official):
    sh, one = (40, 40, 16), (1.0, 1.0, 1.0)
    wt = lambda p, t, sp=one: official(p.astype(np.uint8) * 2, t.astype(np.uint8) * 2, sp)["wt"]
    # (a) dilation groups truth blobs 3 voxels apart into one lesion; panoptica keeps two instances
    t = _box(sh, (5, 12), (5, 12), (4, 10)) | _box(sh, (15, 20), (5, 12), (4, 10))
    ours, theirs = lesionwise_scores(t, t, one), wt(t, t)
    assert (ours["lesion_tp"], theirs["tp"]) == (1, 2) and ours["lesion_dice"] == 1.0 == theirs["sq_dsc"]
    # (b) a truth lesion of ≤ 50 mm³ is left out (missed: no penalty); panoptica counts a false negative
    t = _box(sh, (5, 12), (5, 12), (4, 10)) | _box(sh, (30, 33), (30, 33), (4, 6))      # 18 voxels
    p = _box(sh, (5, 12), (5, 12), (4, 10))
    ours, theirs = lesionwise_scores(p, t, one), wt(p, t)
    assert (ours["lesion_small"], ours["lesion_fn"], ours["lesion_dice"]) == (1, 0, 1.0) and theirs["fn"] == 1
    # (c) one prediction component over two truth lesions scores for both; bipartite matching takes one
    t = _box(sh, (5, 12), (5, 12), (4, 10)) | _box(sh, (25, 32), (5, 12), (4, 10))
    p = _box(sh, (5, 32), (5, 12), (4, 10))
    ours, theirs = lesionwise_scores(p, t, one), wt(p, t)
    assert (ours["lesion_tp"], ours["lesion_fn"]) == (2, 0) and (theirs["tp"], theirs["fn"]) == (1, 1)
    # (d) a prediction next to a lesion, inside its dilation but not overlapping: matched here; FP + FN there
    t, p = _box(sh, (5, 12), (5, 12), (4, 10)), _box(sh, (14, 18), (5, 12), (4, 10))
    ours, theirs = lesionwise_scores(p, t, one), wt(p, t)
    assert (ours["lesion_tp"], ours["lesion_fp"], ours["lesion_dice"]) == (1, 0, 0.0)
    assert (theirs["tp"], theirs["fp"], theirs["fn"]) == (0, 1, 1)
    # (e) a false positive scores 0 in the lesion-wise mean; panoptica's sq_dsc averages matched pairs only
    t = _box(sh, (5, 12), (5, 12), (4, 10))
    p = t | _box(sh, (30, 35), (30, 35), (4, 8))
    ours, theirs = lesionwise_scores(p, t, one), wt(p, t)
    assert (ours["lesion_dice"], ours["lesion_hd95"]) == (0.5, 187.0) and (theirs["sq_dsc"], theirs["fp"]) == (1.0, 1)


def test_empty_masks(official):
    sh = (30, 30, 12)
    z, b = np.zeros(sh, bool), _box(sh, (5, 12), (5, 12), (4, 10))
    both, miss = official(z.astype(np.uint8), z.astype(np.uint8))["wt"], official(z.astype(np.uint8), b.astype(np.uint8) * 2)["wt"]
    ours_both, ours_miss = brats_metrics(z, z.astype(np.uint8), SPACING)["WT"], brats_metrics(z, b.astype(np.uint8) * 2, SPACING)["WT"]
    assert (ours_both["dice"], ours_both["hd95"]) == (1.0, 0.0)                 # BraTS: both empty → 1 / 0
    assert np.isnan(both["global_bin_dsc"]) and np.isnan(both["global_bin_hd95"])     # panoptica: undefined
    assert ours_miss["dice"] == 0.0 == miss["global_bin_dsc"]
    assert abs(ours_miss["hd95"] - np.sqrt(sum((n * s) ** 2 for n, s in zip(sh, SPACING)))) < 1e-9   # the volume diagonal
    assert np.isinf(miss["global_bin_hd95"])                                    # panoptica: inf (its parser: 373)
    assert [lesionwise_scores(z, z)[k] for k in ("lesion_dice", "lesion_hd95")] == [1.0, 0.0]
