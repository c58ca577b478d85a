"""Shared pytest fixtures for every stage's end-to-end tests.

`phantom_data` (session scope) generates, once per test session and in a temporary folder, a tiny BraTS-layout
phantom dataset and its preprocessed cache (about 3 s):

    from patchddm.data import PreparedDataset

    def test_something(phantom_data):
        ds = PreparedDataset(phantom_data.prep)      # 5 cases, 64³, split train 3 / val 1 / test 1
        image, mask, meta = ds.load(ds.split("train")[0])

Fields of the returned `PhantomData`: `raw` (folder of case folders BraTS20_Training_001 … 005, BraTS2020 layout,
.nii.gz), `prep` (the cache written by `preprocess_dataset`), `n` (5), `resolution` (4 mm: 50×59×48 volumes),
`size` (64, the cube edge of the cache), `seed` (0, for the phantoms and the split).
Both folders are shared by all tests of the session: treat them as read-only and copy them
(`shutil.copytree(phantom_data.raw, tmp_path / "raw")`) before changing anything.
"""
import dataclasses
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class PhantomData:
    "Paths and parameters of the session's phantom dataset and cache."
    raw: Path
    prep: Path
    n: int
    resolution: int
    size: int
    seed: int


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> PhantomData:
    "Five 4 mm phantom cases (seed 0) and their 64³ cache, generated once per session."
    from patchddm.phantoms import PHANTOM_SIZES, write_phantoms
    from patchddm.data import PrepConfig, preprocess_dataset

    root = tmp_path_factory.mktemp("phantom_data")
    n, resolution, seed = 5, 4, 0
    size = PHANTOM_SIZES[resolution]
    write_phantoms(root / "raw", n=n, resolution=resolution, seed=seed, progress=False)
    preprocess_dataset(root / "raw", root / "prep", PrepConfig(size=size, seed=seed), progress=False)
    return PhantomData(raw=root / "raw", prep=root / "prep", n=n, resolution=resolution, size=size, seed=seed)
