"""Training datasets read real GeoTIFFs in the published layouts, crop co-located windows, apply
the S2 offset, handle NaN as configured, and name the file or CSV line when something is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from s1s2_encoders.errors import ConfigError, DataFileNotFoundError, DatasetError
from training.data import (
    AugmentConfig,
    DataConfig,
    DFC2020Dataset,
    DFC2020Options,
    PairedFolderDataset,
    PairedFolderOptions,
    SEN12MSDataset,
    SEN12MSOptions,
    SyntheticOptions,
    SyntheticPairsDataset,
    ViewDataset,
    build_dataset,
    collate_samples,
)
from training.data.sen12ms import read_split_csv, season_folder
from training.data.synthetic import synthetic_scene
from training.sampling import SampleKey

from training_data_helpers import REAL_S1, make_dfc2020_tree, make_sen12ms_tree, sen12ms_path, write_tif

TERRAMESH = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "data" / "terramesh"


# ----------------------------------------------------------------------------- split CSVs
def test_split_csv_parses_the_published_rows_and_the_balanced_header(tmp_path):
    path = tmp_path / "sen12ms_observations.csv"
    path.write_text("Seasons.SPRING,26,475\nSeasons.FALL,3,12\n\nROIs2017_winter,7,1\n", encoding="utf-8")
    rows = read_split_csv(path)
    assert [(r.season, r.scene, r.patch_id) for r in rows] == [
        ("ROIs1158_spring", 26, 475), ("ROIs1970_fall", 3, 12), ("ROIs2017_winter", 7, 1)]
    balanced = tmp_path / "validation_observations_balanced_classes.csv"
    balanced.write_text("Season,Scene,ID,dfc_label,copy_nr\nSeasons.VALSET,0,12,3,0\nSeasons.VALSET,0,12,3,1\n", encoding="utf-8")
    assert [(r.season, r.patch_id) for r in read_split_csv(balanced)] == [("ROIs0000_validation", 12)] * 2
    assert season_folder("Seasons.TESTSET") == "ROIs0000_test"


@pytest.mark.parametrize(
    "text,message",
    [
        ("Seasons.SPRING,26,475\nSeasons.SPRING,26\n", r"bad\.csv, line 2: expected 'Season,Scene,ID', got 'Seasons.SPRING,26'"),
        ("Seasons.SPRNG,26,475\n", r"bad\.csv, line 1: unknown season 'Seasons.SPRNG'; expected one of Seasons.SPRING"),
        ("Seasons.SPRING,26,p475\n", r"bad\.csv, line 1: scene and ID must be integers, got '26' and 'p475'"),
        ("\n\n", r"split CSV .*bad\.csv has no rows"),
    ],
)
def test_split_csv_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_split_csv(path)


def test_split_csv_missing_file(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"split CSV .*nope\.csv does not exist"):
        read_split_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- SEN12MS
@pytest.fixture(scope="module")
def sen12ms_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sen12ms")
    make_sen12ms_tree(root, nan_patch=("ROIs1868_summer", 5, 7))
    (root / "sen12ms_observations.csv").write_text(
        "Seasons.SPRING,1,30\nSeasons.SPRING,1,31\nSeasons.SUMMER,5,7\n", encoding="utf-8")
    return root


def test_sen12ms_reads_the_real_s1_patch_through_a_seeded_random_crop(sen12ms_root):
    ds = SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), split_csv=str(sen12ms_root / "sen12ms_observations.csv"),
                                       crop_size=128, with_lc=True))
    assert len(ds) == 3 and ds.sample_id(0) == "ROIs1158_spring/1/p30"
    sample = ds[SampleKey(0, 1234)]
    assert sample["s1"].shape == (2, 128, 128) and sample["s1"].dtype == torch.float32
    assert sample["s2"].shape == (13, 128, 128) and sample["lc"].shape == (128, 128) and sample["lc"].dtype == torch.int64
    assert int(sample["n_nan_replaced"]) == 0 and int(sample["index"]) == 0
    # Same key, same crop; the crop is a window of the real file (found by matching).
    again = ds[SampleKey(0, 1234)]
    assert torch.equal(sample["s1"], again["s1"])
    with rasterio.open(REAL_S1) as src:
        full = src.read().astype(np.float32)
    vv = sample["s1"][0].numpy()
    matches = [(r, c) for r in range(0, 129) for c in range(0, 129) if np.array_equal(full[0, r, c : c + 128], vv[0])]
    assert any(np.array_equal(full[:, r : r + 128, c : c + 128], sample["s1"].numpy()) for r, c in matches)
    assert -30 < float(sample["s1"][0].mean()) < 0  # real VV in dB
    with rasterio.open(sen12ms_path(sen12ms_root, "ROIs1158_spring", "lc", 1, 30)) as src:
        lc_full = src.read(1)
    r, c = next((r, c) for r, c in matches if np.array_equal(full[:, r : r + 128, c : c + 128], sample["s1"].numpy()))
    assert np.array_equal(sample["lc"].numpy(), lc_full[r : r + 128, c : c + 128])  # same window for every sensor
    other = ds[SampleKey(0, 99)]
    assert not torch.equal(sample["s1"], other["s1"])


def test_sen12ms_skips_nan_samples_and_counts_them(sen12ms_root):
    ds = SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), split_csv=str(sen12ms_root / "sen12ms_observations.csv"),
                                       crop_size=None, crop="none"))
    sample = ds[SampleKey(2, 5)]  # the summer patch has a NaN stripe in S1 -> another sample
    assert int(sample["n_nan_replaced"]) >= 1 and int(sample["index"]) != 2
    assert torch.isfinite(sample["s1"]).all()
    masked = SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), split_csv=str(sen12ms_root / "sen12ms_observations.csv"),
                                           crop="none", nan_policy="mask"))
    m = masked[SampleKey(2, 5)]
    assert int(m["index"]) == 2 and int(m["n_nan_replaced"]) == 0
    assert m["valid"].shape == (1, 256, 256) and not m["valid"][0, 100:140].any() and m["valid"][0, :100].all()
    assert torch.isfinite(m["s1"]).all() and float(m["s1"][:, 100:140].abs().sum()) == 0.0
    strict = SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), split_csv=str(sen12ms_root / "sen12ms_observations.csv"),
                                           crop="none", nan_policy="mask", min_valid_fraction=0.9))
    assert int(strict[SampleKey(2, 5)]["index"]) != 2  # 40/256 rows invalid: below 90 % valid -> redrawn


def test_sen12ms_scan_without_csv_and_missing_file_errors(sen12ms_root, tmp_path):
    ds = SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), seasons=("ROIs1158_spring", "Seasons.SUMMER"), crop_size=64))
    assert [r.sample_id for r in ds.rows] == ["ROIs1158_spring/1/p30", "ROIs1158_spring/1/p31", "ROIs1868_summer/5/p7"]
    csv = tmp_path / "split.csv"
    csv.write_text("Seasons.SPRING,1,30\nSeasons.SPRING,1,99\nSeasons.WINTER,2,3\n", encoding="utf-8")
    with pytest.raises(DataFileNotFoundError, match=r"4 file\(s\) missing:\n  .*ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p99\.tif\n  .*ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p99\.tif"):
        SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), split_csv=str(csv)))
    lazy = SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), split_csv=str(csv), check_files=False, crop_size=64))
    with pytest.raises(DataFileNotFoundError, match=r"missing file .*ROIs1158_spring_s1_1_p99\.tif"):
        lazy[1]
    with pytest.raises(DataFileNotFoundError, match="season folder .*ROIs2017_winter does not exist"):
        SEN12MSDataset(SEN12MSOptions(root=str(sen12ms_root), seasons=("ROIs2017_winter",)))
    with pytest.raises(DataFileNotFoundError, match="SEN12MS root folder .*nowhere does not exist"):
        SEN12MSDataset(SEN12MSOptions(root=str(tmp_path / "nowhere")))


def test_crop_larger_than_patch_and_mismatched_sizes_are_named(tmp_path):
    make_sen12ms_tree(tmp_path, size=64)
    ds = SEN12MSDataset(SEN12MSOptions(root=str(tmp_path), seasons=("ROIs1868_summer",), crop_size=128))
    with pytest.raises(DatasetError, match=r"ROIs1868_summer/5/p7: crop_size 128 is larger than the patch \(64 x 64 pixels\)"):
        ds[0]
    write_tif(sen12ms_path(tmp_path, "ROIs1868_summer", "s2", 5, 7), np.zeros((13, 32, 32), np.uint16))
    ds = SEN12MSDataset(SEN12MSOptions(root=str(tmp_path), seasons=("ROIs1868_summer",), crop_size=48))
    with pytest.raises(DatasetError, match=r"s2_5_p7\.tif is 32 x 32 pixels; the crop window .* does not fit"):
        ds[SampleKey(0, 3)]
    write_tif(sen12ms_path(tmp_path, "ROIs1868_summer", "s2", 5, 7), np.zeros((12, 64, 64), np.uint16))
    with pytest.raises(DatasetError, match=r"s2_5_p7\.tif has 12 band\(s\); expected 13"):
        ds[SampleKey(0, 3)]


# ----------------------------------------------------------------------------- DFC2020
def test_dfc2020_validation_with_labels_and_test_without(tmp_path):
    make_dfc2020_tree(tmp_path, "validation", [3, 8])
    make_dfc2020_tree(tmp_path, "test", [5], with_dfc=False)
    val = DFC2020Dataset(DFC2020Options(root=str(tmp_path), split="validation", labels=("dfc", "lc"), crop_size=224, crop="center"))
    sample = val[0]
    assert sample["dfc"].shape == (224, 224) and sample["lc"].shape == (224, 224)
    with rasterio.open(sen12ms_path(tmp_path, "ROIs0000_validation", "dfc", 0, 3)) as src:
        expected = src.read(1, window=Window(16, 16, 224, 224))
    assert np.array_equal(sample["dfc"].numpy(), expected)  # centre crop: offset (256 - 224) / 2
    with pytest.raises(DataFileNotFoundError, match=r"ROIs0000_test/dfc_0 does not exist: .*public dfc_public_dataset.zip does not contain the test labels"):
        DFC2020Dataset(DFC2020Options(root=str(tmp_path), split="test"))
    test = DFC2020Dataset(DFC2020Options(root=str(tmp_path), split="test", labels=(), crop_size=128))
    assert len(test) == 1 and set(test[0]) == {"s1", "s2", "index", "n_nan_replaced"}
    (tmp_path / "validation_observations.csv").write_text("Seasons.VALSET,0,8\n", encoding="utf-8")
    assert [r.patch_id for r in DFC2020Dataset(DFC2020Options(root=str(tmp_path), crop_size=64)).rows] == [8]
    (tmp_path / "validation_observations.csv").write_text("Seasons.TESTSET,0,5\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"lists seasons \['ROIs0000_test'\]; the DFC2020 validation split is ROIs0000_validation"):
        DFC2020Dataset(DFC2020Options(root=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"labels \['igbp'\] unknown"):
        build_dataset(DataConfig(datasets=[{"kind": "dfc2020", "root": str(tmp_path), "labels": ["igbp"]}]))


# ----------------------------------------------------------------------------- paired folder
def test_paired_folder_reads_terramesh_and_removes_the_offset():
    ds = PairedFolderDataset(PairedFolderOptions(root=str(TERRAMESH), s2_offset=1000, crop="none", label_dir="LULC"))
    assert len(ds) == 3 and ds.sample_id(0) == "282D_485L_3_3"
    sample = ds[0]
    with rasterio.open(TERRAMESH / "S2L1C" / "282D_485L_3_3.tif") as src:
        raw = src.read().astype(np.float32)
    with rasterio.open(TERRAMESH / "S1RTC" / "282D_485L_3_3.tif") as src:
        s1 = src.read().astype(np.float32)
    assert torch.equal(sample["s2"], torch.from_numpy(raw - 1000))
    assert torch.equal(sample["s1"], torch.from_numpy(s1))
    assert sample["label_map"].shape == (224, 224)
    assert float(sample["s2"][10].median()) < 100  # cirrus B10 back near 0 once the offset is removed


def test_paired_folder_unpaired_files(tmp_path):
    rng = np.random.default_rng(0)
    write_tif(tmp_path / "S1RTC" / "a.tif", rng.normal(size=(2, 32, 32)).astype(np.float32))
    write_tif(tmp_path / "S2L1C" / "a.tif", rng.integers(0, 3000, (13, 32, 32)).astype(np.uint16))
    write_tif(tmp_path / "S1RTC" / "b.tif", rng.normal(size=(2, 32, 32)).astype(np.float32))
    with pytest.raises(DatasetError, match=r"1 sample name\(s\) lack a partner in S1RTC/S2L1C: b \(set unpaired"):
        PairedFolderDataset(PairedFolderOptions(root=str(tmp_path)))
    with pytest.warns(UserWarning, match="lack a partner.*skipping them"):
        ds = PairedFolderDataset(PairedFolderOptions(root=str(tmp_path), unpaired="warn", crop_size=16))
    assert len(ds) == 1 and ds[0]["s1"].shape == (2, 16, 16)
    with pytest.raises(DataFileNotFoundError, match=r"folder .*S2L2A does not exist"):
        PairedFolderDataset(PairedFolderOptions(root=str(tmp_path), s2_dir="S2L2A"))


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_scene_is_deterministic_structured_and_modalities_share_the_map():
    a, b = synthetic_scene(5, n_classes=8, size=48), synthetic_scene(5, n_classes=8, size=48)
    assert np.array_equal(a.s1_db, b.s1_db) and np.array_equal(a.labels, b.labels)
    assert a.s1_db.shape == (2, 48, 48) and a.s2_dn.shape == (13, 48, 48) and a.labels.dtype == np.int64
    assert 0 < a.s2_dn.min() and a.s2_dn.max() <= 10000 and a.s2_dn[10].mean() < 50  # DN, near-zero cirrus
    # Spatially structured: neighbouring pixels mostly share a class.
    assert (a.labels[:, 1:] == a.labels[:, :-1]).mean() > 0.8
    # Class-dependent signals in both modalities: water (7) is dark in NIR (B08) and in VV.
    many = [synthetic_scene(s, size=48) for s in range(40)]
    nir = {c: np.mean([sc.s2_dn[7][sc.labels == c].mean() for sc in many if (sc.labels == c).any()]) for c in (0, 7)}
    vv = {c: np.mean([sc.s1_db[0][sc.labels == c].mean() for sc in many if (sc.labels == c).any()]) for c in (5, 7)}
    assert nir[0] > 3 * nir[7] and vv[5] > vv[7] + 10
    assert len({sc.majority_class for sc in many}) >= 6
    assert synthetic_scene(1, n_classes=12).labels.max() < 12


def test_synthetic_moisture_darkens_soil_in_s2_and_brightens_it_in_s1_and_leaves_water_alone():
    for seed in range(12):
        dry, wet = synthetic_scene(seed, size=48), synthetic_scene(seed, size=48, moisture=1.0)
        assert np.array_equal(dry.labels, wet.labels)  # the scene state has its own random stream
        water, barren = dry.labels == 7, dry.labels == 6
        assert np.array_equal(wet.s2_dn[:, water], dry.s2_dn[:, water]) and np.array_equal(wet.s1_db[:, water], dry.s1_db[:, water])
        if barren.any():  # same noise and speckle, so the comparison holds pixel by pixel
            assert (wet.s2_dn[11][barren] <= dry.s2_dn[11][barren]).all() and (wet.s1_db[0][barren] >= dry.s1_db[0][barren]).all()
    darkening = [1 - synthetic_scene(s, size=48, moisture=1.0).s2_dn[11].mean() / synthetic_scene(s, size=48).s2_dn[11].mean() for s in range(12)]
    assert max(darkening) > 0.05 and min(darkening) >= 0  # drawn per scene: some scenes are wet, some dry


def test_synthetic_phenology_moves_vegetation_greenness_per_scene_and_not_bare_classes():
    def ndvi(scene, cls):
        nir, red = scene.s2_dn[7][scene.labels == cls], scene.s2_dn[3][scene.labels == cls]
        return float(((nir - red) / (nir + red)).mean())

    seeds = [s for s in range(60) if (synthetic_scene(s, size=32).labels == 0).any()][:12]
    plain = [ndvi(synthetic_scene(s, size=32), 0) for s in seeds]
    seasonal = [ndvi(synthetic_scene(s, size=32, phenology=0.35), 0) for s in seeds]
    assert len(seeds) >= 8 and np.std(seasonal) > 2 * np.std(plain)  # forest: leaf-on and leaf-off scenes
    assert min(seasonal) < min(plain) - 0.1  # browner than the prototype ever is
    for s in seeds:
        a, b = synthetic_scene(s, size=32), synthetic_scene(s, size=32, phenology=0.35)
        bare = (a.labels == 6) | (a.labels == 7)  # barren and water have no green vegetation
        assert np.array_equal(a.s2_dn[:, bare], b.s2_dn[:, bare])


def test_synthetic_boundary_mixing_changes_edge_pixels_only_and_keeps_the_labels():
    for seed in range(8):
        hard, mixed = synthetic_scene(seed, size=48), synthetic_scene(seed, size=48, mixing_px=0.7)
        assert np.array_equal(hard.labels, mixed.labels)
        padded = np.pad(hard.labels, 3, mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (7, 7))
        interior = (windows == hard.labels[..., None, None]).all(axis=(-1, -2))  # no other class within 3 px
        np.testing.assert_allclose(mixed.s2_dn[:, interior], hard.s2_dn[:, interior], rtol=1e-5)
        np.testing.assert_allclose(mixed.s1_db[:, interior], hard.s1_db[:, interior], rtol=1e-4, atol=1e-4)
        if (~interior).any():
            edge = (hard.labels[:, 1:] != hard.labels[:, :-1])
            moved = np.abs(mixed.s2_dn[7][:, 1:] - hard.s2_dn[7][:, 1:])[edge]
            assert moved.max() > 100  # a pixel on a class edge carries some of the other class's NIR
    with pytest.raises(DatasetError, match="mixing_px must be >= 0, got -1"):
        SyntheticOptions(mixing_px=-1)


def test_synthetic_dataset_passes_the_variability_options_to_the_scenes():
    options = SyntheticOptions(n_samples=2, size=32, seed=4, phenology=0.3, moisture=0.8, mixing_px=0.5, crop="none")
    sample = SyntheticPairsDataset(options)[SampleKey(1, 0)]
    scene = synthetic_scene(4 * 1_000_003 + 1, 8, 32, phenology=0.3, moisture=0.8, mixing_px=0.5)
    assert torch.equal(sample["s2"], torch.from_numpy(scene.s2_dn)) and torch.equal(sample["label_map"], torch.from_numpy(scene.labels))


def test_synthetic_dataset_labels_and_nan_injection():
    ds = SyntheticPairsDataset(SyntheticOptions(n_samples=20, size=48, crop_size=32, nan_fraction=0.5, seed=3))
    samples = [ds[SampleKey(i, i)] for i in range(20)]
    assert all(torch.isfinite(s["s1"]).all() for s in samples)
    assert sum(int(s["n_nan_replaced"]) for s in samples) > 0
    s = samples[0]
    assert s["label_map"].shape == (32, 32) and int(s["label"]) == int(torch.bincount(s["label_map"].flatten()).argmax())
    batch = collate_samples(samples[:4])
    assert batch["s2"].shape == (4, 13, 32, 32) and batch["label"].shape == (4,)


# ----------------------------------------------------------------------------- config + augment
def test_build_dataset_concatenates_repeats_and_validates():
    cfg = DataConfig(crop_size=32, datasets=[
        {"kind": "paired_folder", "root": str(TERRAMESH), "s2_offset": 1000, "repeat": 4},
        {"kind": "synthetic", "n_samples": 5, "size": 48},
    ])
    ds = build_dataset(cfg)
    assert len(ds) == 3 * 4 + 5
    assert ds[SampleKey(0, 1)]["s1"].shape == (2, 32, 32)
    assert not torch.equal(ds[SampleKey(0, 1)]["s2"], ds[SampleKey(3, 2)]["s2"])  # repeat 2 of pair 0, other crop
    assert ds[SampleKey(14, 1)]["s2"].shape == (13, 32, 32)  # routed to the synthetic part
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.kind 'sen2' is unknown; choose from sen12ms, dfc2020"):
        build_dataset(DataConfig(datasets=[{"kind": "sen2"}]))
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]: unknown key\(s\) \['s2offset'\]"):
        build_dataset(DataConfig(datasets=[{"kind": "paired_folder", "root": ".", "s2offset": 1000}]))
    with pytest.raises(ConfigError, match="must list at least one dataset"):
        DataConfig(datasets=[])


def test_views_share_geometry_across_modalities_and_differ_between_views():
    base = SyntheticPairsDataset(SyntheticOptions(n_samples=4, size=32))

    class Marked(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, key):
            sample = base[key]
            marker = torch.arange(32 * 32, dtype=torch.float32).view(32, 32)
            sample["s1"][0] = marker
            sample["s2"][0] = marker
            return sample

    geometry_only = AugmentConfig(s2_gain_std=0, s2_offset_std=0, s2_noise_std=0, s1_offset_std=0, s1_speckle_looks=None)
    views = ViewDataset(Marked(), geometry_only, views=2)
    out = views[SampleKey(1, 77)]
    assert torch.allclose(out["s1"][0], out["s2"][0]) and torch.allclose(out["s1_view2"][0], out["s2_view2"][0])
    assert not torch.allclose(out["s1"][0], out["s1_view2"][0])
    full = ViewDataset(base, AugmentConfig(), views=2)[SampleKey(1, 77)]
    assert full["s2"].shape == full["s2_view2"].shape == (13, 32, 32)
    assert torch.isfinite(full["s1"]).all() and not torch.equal(full["s1"], base[SampleKey(1, 77)]["s1"])
    with pytest.raises(ConfigError, match="crop_scale must satisfy"):
        AugmentConfig(crop_scale=(0.5, 1.5))
