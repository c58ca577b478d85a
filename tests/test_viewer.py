"""The viewer as a user meets it outside the notebook: a fresh interpreter, files on disk, one-line errors."""
import subprocess, sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from patchddm.core import PatchDDMError
from patchddm.viewer import VolumeViewer


def _write_case(root: Path, case_id: str = "BraTS20_Training_042", shape=(20, 18, 10)) -> Path:
    rng = np.random.default_rng(0)
    d = root / case_id
    d.mkdir(parents=True)
    aff = np.diag([-1.2, 1.2, 2.5, 1.0])  # x stored pointing left, as in many scanner exports
    for seq in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image((rng.random(shape) * 500).astype(np.int16), aff), d / f"{case_id}_{seq}.nii")
    seg = np.zeros(shape, np.uint8)
    seg[4:9, 5:10, 6:8] = 4
    nib.save(nib.Nifti1Image(seg, aff), d / f"{case_id}_seg.nii")
    return d


def test_import_leaves_matplotlib_backend_and_later_stages_alone():
    code = ("import sys, patchddm.viewer; "
            "bad = [m for m in ('matplotlib.pyplot', 'patchddm.data', 'patchddm.model', 'patchddm.evaluate') if m in sys.modules]; "
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_case_folder_to_png(tmp_path):
    case = _write_case(tmp_path / "data")
    pred = tmp_path / "PRED" / case.name
    pred.mkdir(parents=True)
    mask = np.zeros((20, 18, 10), np.uint8)
    mask[5:9, 5:10, 6:8] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([-1.2, 1.2, 2.5, 1.0])), pred / "mask.nii.gz")
    v = VolumeViewer.from_files(case, tmp_path / "PRED", size=100)
    assert v.spacing == pytest.approx((1.2, 1.2, 2.5))
    assert v.default_index["axial"] in (6, 7)               # the slices holding the label-4 block
    assert v.overlays["truth"][::-1][4:9, 5:10, 6:8].all()    # reoriented to RAS+ (x flipped back)
    out = tmp_path / "png" / "axial.png"
    rgb = v.render_png(out)
    assert out.read_bytes()[:4] == b"\x89PNG" and rgb.ndim == 3 and rgb.dtype == np.uint8
    with pytest.raises(PatchDDMError, match="exists"):
        v.render_png(out)
    v.close()


def test_missing_sequence_is_one_line(tmp_path):
    case = _write_case(tmp_path)
    (case / f"{case.name}_flair.nii").unlink()
    with pytest.raises(PatchDDMError) as e:
        VolumeViewer.from_files(case)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(case / f"{case.name}_flair.nii.gz")) and "flair sequence not found" in msg
