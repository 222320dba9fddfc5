"""`spp-cls shards`: real JPEG folders through the real conversion, quirks, verify, resume and the command line."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from helpers import write_quirk_files
from PIL import Image

from spp_cls.data.manifest import Manifest
from spp_cls.data.shards.convert import TAR_MTIME, ShardsStateError, StrictSkipError, convert, main, verify
from spp_cls.data.synthetic import make_imagenet_folder

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def read_tar(path: Path) -> list[dict]:
    """The samples of a shard in order: {"__key__", "jpg", "cls", "json"} as raw bytes, plus the tar headers."""
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            sample = samples.setdefault(key, {"__key__": key, "headers": []})
            sample[extension] = tar.extractfile(member).read()
            sample["headers"].append(member)
    return list(samples.values())


def all_samples(split_dir: Path) -> list[dict]:
    manifest = Manifest.load(split_dir)
    return [sample for path in manifest.shard_paths for sample in read_tar(path)]


def decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return image


def source_files(root: Path, split: str) -> set[str]:
    return {path.relative_to(root).as_posix() for path in (root / split).rglob("*") if path.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# the demo conversion
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_source_image_is_in_the_shards_once_with_the_standard_keys(imagenet_folder, demo_shards, split):
    manifest = Manifest.load(demo_shards / split)
    samples = all_samples(demo_shards / split)

    assert sorted(p.name for p in (demo_shards / split).glob("*.tar")) == [s.name for s in manifest.shards]
    assert [len(read_tar(p)) for p in manifest.shard_paths] == [s.count for s in manifest.shards]
    assert len(samples) == manifest.total == len(source_files(imagenet_folder, split))
    assert {json.loads(s["json"])["source"] for s in samples} == source_files(imagenet_folder, split)
    assert len({s["__key__"] for s in samples}) == len(samples)
    assert all(s["__key__"].startswith(f"{split}-") for s in samples)
    for sample in samples:
        assert sorted(k for k in sample if k not in ("__key__", "headers")) == ["cls", "jpg", "json"]
        assert all(h.mtime == TAR_MTIME and h.uid == 0 and h.uname == "" for h in sample["headers"])
        image = decode(sample["jpg"])
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert not image.info.get("progressive")


def test_webdataset_reads_the_shards_with_its_own_decoders(demo_shards):
    manifest = Manifest.load(demo_shards / "val")
    dataset = wds.WebDataset([str(p) for p in manifest.shard_paths], shardshuffle=False).decode("pil")
    samples = list(dataset)
    assert len(samples) == manifest.total == 15
    assert all(isinstance(s["cls"], int) and s["jpg"].mode == "RGB" and "wnid" in s["json"] for s in samples)
    assert Counter(s["cls"] for s in samples) == dict(enumerate(manifest.class_counts))


def test_train_images_have_shorter_side_256_and_keep_their_aspect_ratio(demo_shards):
    for sample in all_samples(demo_shards / "train"):
        width, height = decode(sample["jpg"]).size
        orig_w, orig_h = json.loads(sample["json"])["orig_size"]
        assert min(width, height) == 256
        assert (width >= height) == (orig_w >= orig_h)
        assert max(width, height) == round(max(orig_w, orig_h) * 256 / min(orig_w, orig_h))


def test_val_images_keep_full_size_and_unchanged_jpegs_keep_their_bytes(imagenet_folder, demo_shards):
    for sample in all_samples(demo_shards / "val"):
        meta = json.loads(sample["json"])
        source = (imagenet_folder / meta["source"]).read_bytes()
        assert list(decode(sample["jpg"]).size) == meta["orig_size"] == list(decode(source).size)
        assert sample["jpg"] == source


def test_class_index_is_the_position_of_the_wnid_in_the_sorted_train_folders(imagenet_folder, demo_shards):
    wnids = sorted(p.name for p in (imagenet_folder / "train").iterdir())
    names = dict(line.split(" ", 1) for line in (imagenet_folder / "LOC_synset_mapping.txt").read_text().splitlines())
    for split in ("train", "val"):
        manifest = Manifest.load(demo_shards / split)
        assert [(c.index, c.wnid, c.name) for c in manifest.classes] == [(i, w, names[w]) for i, w in enumerate(wnids)]
        for sample in all_samples(demo_shards / split):
            meta = json.loads(sample["json"])
            folder = meta["source"].split("/")[1]
            assert int(sample["cls"]) == wnids.index(folder)
            assert meta["wnid"] == folder


def test_train_shards_mix_classes(demo_shards):
    manifest = Manifest.load(demo_shards / "train")
    classes_per_shard = [len({int(s["cls"]) for s in read_tar(path)}) for path in manifest.shard_paths]
    assert all(n >= 2 for n in classes_per_shard), classes_per_shard
    assert manifest.class_counts == (12,) * 5


def test_pixel_statistics_match_a_computation_over_every_pixel(demo_shards):
    manifest = Manifest.load(demo_shards / "train")
    pixels = np.concatenate([np.asarray(decode(s["jpg"]), np.float64).reshape(-1, 3)
                             for s in all_samples(demo_shards / "train")])
    mean = pixels.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(pixels, rowvar=False))

    assert np.allclose(manifest.mean_rgb, mean, atol=3.0)
    vectors = np.asarray(manifest.pca_eigvec)
    assert np.allclose(vectors @ vectors.T, np.eye(3), atol=1e-9)
    assert list(manifest.pca_eigval) == sorted(manifest.pca_eigval, reverse=True)
    assert np.allclose(manifest.pca_eigval, eigval[::-1], rtol=0.15)
    assert abs(vectors[0] @ eigvec[:, -1]) > 0.98


def test_manifest_load_names_the_command_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shard manifest at .*manifest\.json.*spp-cls shards --src"):
        Manifest.load(tmp_path / "train")


def test_manifest_round_trips_and_gives_absolute_shard_paths(demo_shards, tmp_path):
    manifest = Manifest.load(demo_shards / "train")
    assert manifest.num_classes == 5
    assert all(p.is_absolute() and p.is_file() for p in manifest.shard_paths)
    assert manifest.save(tmp_path / "train") == manifest
    assert Manifest.load(tmp_path / "train") == manifest


# ---------------------------------------------------------------------------------------------------------------
# quirks of real datasets
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quirk_folder(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    """2 classes x 2 train + 1 val synthetic images, plus every quirk file in train/<class 0> and val/<class 1>."""
    root = make_imagenet_folder(tmp_path_factory.mktemp("quirks") / "src", num_classes=2, train_per_class=2,
                                val_per_class=1, shorter_side_range=(40, 60))
    wnids = sorted(p.name for p in (root / "train").iterdir())
    quirks = {"train": write_quirk_files(root / "train" / wnids[0]), "val": write_quirk_files(root / "val" / wnids[1])}
    solid = Image.new("RGB", (50, 40), (200, 30, 40))
    solid.convert("CMYK").save(root / "train" / wnids[1] / "solid_cmyk.JPEG", quality=95)
    half_transparent = solid.convert("RGBA")
    half_transparent.paste((0, 0, 0, 0), (25, 0, 50, 40))
    half_transparent.save(root / "train" / wnids[1] / "half_transparent.JPEG", format="PNG")
    return root, quirks


@pytest.fixture(scope="module")
def quirk_shards(quirk_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quirk_shards")
    convert(quirk_folder[0], out, shard_size=8)
    return out


def _by_source(split_dir: Path) -> dict[str, dict]:
    return {json.loads(s["json"])["source"]: s for s in all_samples(split_dir)}


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_readable_quirk_becomes_an_rgb_sample_of_the_right_size(quirk_folder, quirk_shards, split):
    root, quirks = quirk_folder
    samples = _by_source(quirk_shards / split)
    wnid = sorted(p.name for p in (root / "train").iterdir())[0 if split == "train" else 1]
    for quirk in (q for q in quirks[split] if q.readable):
        sample = samples[f"{split}/{wnid}/{quirk.name}"]
        image = decode(sample["jpg"])
        assert (image.format, image.mode) == ("JPEG", "RGB"), quirk.what
        assert not image.info.get("progressive"), quirk.what
        assert tuple(json.loads(sample["json"])["orig_size"]) == quirk.display_size, quirk.what
        if split == "train":
            assert min(image.size) == 256, quirk.what
        else:
            assert image.size == quirk.display_size, quirk.what


def test_exif_orientation_is_applied(quirk_folder, quirk_shards):
    root, _ = quirk_folder
    wnid = sorted(p.name for p in (root / "train").iterdir())[0]
    image = decode(_by_source(quirk_shards / "train")[f"train/{wnid}/quirk_exif_rotated.JPEG"]["jpg"])
    assert image.size == (256, 512)
    top, bottom = np.asarray(image)[:200].mean(axis=(0, 1)), np.asarray(image)[-200:].mean(axis=(0, 1))
    assert top[0] > 180 and top[2] < 60, top
    assert bottom[2] > 180 and bottom[0] < 60, bottom


def test_extreme_aspect_and_tiny_images_are_resized_to_shorter_side_256(quirk_folder, quirk_shards):
    root, _ = quirk_folder
    wnid = sorted(p.name for p in (root / "train").iterdir())[0]
    samples = _by_source(quirk_shards / "train")
    assert decode(samples[f"train/{wnid}/quirk_wide.JPEG"]["jpg"]).size == (6400, 256)
    assert decode(samples[f"train/{wnid}/quirk_tiny.JPEG"]["jpg"]).size == (256, 256)


def test_cmyk_colours_survive_and_transparency_becomes_white(quirk_folder, quirk_shards):
    root, _ = quirk_folder
    wnid = sorted(p.name for p in (root / "train").iterdir())[1]
    samples = _by_source(quirk_shards / "train")
    cmyk = np.asarray(decode(samples[f"train/{wnid}/solid_cmyk.JPEG"]["jpg"]), np.float64)
    assert np.allclose(cmyk[20:-20, 20:-20].mean(axis=(0, 1)), (200, 30, 40), atol=8)
    halves = np.asarray(decode(samples[f"train/{wnid}/half_transparent.JPEG"]["jpg"]), np.float64)
    assert np.allclose(halves[:, :100].mean(axis=(0, 1)), (200, 30, 40), atol=8)
    assert np.allclose(halves[:, -100:].mean(axis=(0, 1)), (255, 255, 255), atol=8)


def test_unreadable_files_are_skipped_and_named_with_their_reason(quirk_folder, quirk_shards):
    root, quirks = quirk_folder
    wnids = sorted(p.name for p in (root / "train").iterdir())
    expected_reasons = {"quirk_truncated.JPEG": "truncated", "quirk_empty.JPEG": "empty file",
                        "quirk_not_an_image.JPEG": "not an image", "quirk_bomb.JPEG": "too many pixels"}
    for split, wnid in (("train", wnids[0]), ("val", wnids[1])):
        manifest = Manifest.load(quirk_shards / split)
        reasons = {s.path: s.reason for s in manifest.skipped}
        assert set(reasons) == {f"{split}/{wnid}/{q.name}" for q in quirks[split] if not q.readable}
        for name, words in expected_reasons.items():
            assert words in reasons[f"{split}/{wnid}/{name}"]
        assert manifest.total == len(source_files(root, split)) - len(reasons)
    assert verify(quirk_shards) == []


def test_cli_names_skipped_files_and_strict_exits_non_zero_without_a_manifest(quirk_folder, tmp_path, capsys):
    root, _ = quirk_folder
    out = tmp_path / "out"
    assert main(["--src", str(root), "--out", str(out), "--shard-size", "8", "--strict"]) == 1
    captured = capsys.readouterr()
    assert "--strict" in captured.err
    assert "quirk_empty.JPEG: empty file" in captured.out
    assert not (out / "train" / "manifest.json").exists()
    written = {p: p.stat().st_mtime_ns for p in out.glob("*/*.tar")}

    assert main(["--src", str(root), "--out", str(out), "--shard-size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("skipped (train)" in line for line in lines) == sum("skipped (val)" in line for line in lines) == 4
    assert lines[-1].startswith("done: train ") and "8 skipped" in lines[-1]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.tar")} == written
    assert Manifest.load(out / "train").total == len(source_files(root, "train")) - 4


# ---------------------------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------------------------


def test_flat_val_with_kaggle_csv_three_folders_up(tmp_path):
    kaggle = make_imagenet_folder(tmp_path / "kaggle", num_classes=3, train_per_class=1, val_per_class=3,
                                  val_layout="flat", shorter_side_range=(32, 48))
    src = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    src.mkdir(parents=True)
    for split in ("train", "val"):
        (kaggle / split).rename(src / split)
    solution = dict(line.split(",") for line in (kaggle / "LOC_val_solution.csv").read_text().splitlines()[1:])
    (src / "val" / "ILSVRC2012_val_00000002.JPEG").unlink()
    shutil.copy(src / "val" / "ILSVRC2012_val_00000001.JPEG", src / "val" / "ILSVRC2012_val_00000999.JPEG")

    manifests = convert(src, tmp_path / "out", splits=["val"], shard_size=2)

    val = manifests["val"]
    wnids = [c.wnid for c in val.classes]
    assert wnids == sorted(p.name for p in (src / "train").iterdir())
    assert not (tmp_path / "out" / "train").exists()
    samples = all_samples(tmp_path / "out" / "val")
    assert len(samples) == val.total == 8
    for sample in samples:
        image_id = Path(json.loads(sample["json"])["source"]).stem
        assert wnids[int(sample["cls"])] == solution[image_id].split()[0]
    assert {s.path: s.reason for s in val.skipped} == {
        "val/ILSVRC2012_val_00000999.JPEG": "not listed in LOC_val_solution.csv",
        "val/ILSVRC2012_val_00000002.JPEG": "listed in LOC_val_solution.csv, file missing",
    }
    assert val.settings["val_labels"] == str(kaggle / "LOC_val_solution.csv")


def test_val_folder_of_an_unknown_class_and_stray_train_files_are_named(tmp_path):
    src = make_imagenet_folder(tmp_path / "src", num_classes=2, train_per_class=1, val_per_class=1,
                               shorter_side_range=(32, 40))
    (src / "val" / "n00000000").mkdir()
    shutil.copy(next((src / "train").rglob("*.JPEG")), src / "val" / "n00000000" / "x.JPEG")
    (src / "train" / "README.txt").write_text("hello")
    manifests = convert(src, tmp_path / "out", shard_size=4)
    assert [(s.path, s.reason) for s in manifests["val"].skipped] == [
        ("val/n00000000/x.JPEG", "class folder 'n00000000' is not one of the train classes")]
    assert [(s.path, s.reason) for s in manifests["train"].skipped] == [("train/README.txt",
                                                                         "not inside a class folder")]


def test_an_imagenette_folder_converts_as_it_unpacks_with_class_names_from_the_wnids(tmp_path, capsys):
    """fast.ai's Imagenette / Imagewoof layout: train/<wnid>/, val/<wnid>/, a noisy-labels CSV at the top and no
    synset mapping file; the manifest names each class as ImageNet does."""
    src = tmp_path / "imagenette2-320"
    wnids = {"n01440764": "tench, Tinca tinca", "n03888257": "parachute, chute"}
    for split, count in (("train", 3), ("val", 2)):
        for number, wnid in enumerate(wnids):
            folder = src / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", (320, 240 + k), (60 * number, 90, 30 * k)).save(folder / f"{wnid}_{k}.JPEG")
    (src / "noisy_imagenette.csv").write_text("path,noisy_labels_0,is_valid\ntrain/n01440764/x.JPEG,n01440764,False\n")
    assert main(["--src", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    for split, count in (("train", 6), ("val", 4)):
        manifest = Manifest.load(tmp_path / "out" / split)
        assert [(c.wnid, c.name) for c in manifest.classes] == list(wnids.items())
        assert manifest.total == count and manifest.skipped == ()


# ---------------------------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------------------------


def test_verify_finds_nothing_wrong_in_a_clean_conversion(demo_shards):
    assert verify(demo_shards) == []


def _rewrite_tar(path: Path, change) -> None:
    """Rewrite a shard member by member, passing each (name, payload) through `change`."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, payload in members:
            payload = change(member.name, payload)
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))


def test_verify_catches_corrupt_missing_and_mislabelled_shards(demo_shards, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(demo_shards, out)
    first_val_key = read_tar(out / "val" / "val-000001.tar")[0]["__key__"]
    _rewrite_tar(out / "val" / "val-000001.tar",
                 lambda name, data: bytes(len(data)) if name == f"{first_val_key}.jpg" else data)
    relabelled = read_tar(out / "train" / "train-000004.tar")[0]
    relabelled_member = f"{relabelled['__key__']}.cls"
    _rewrite_tar(out / "train" / "train-000004.tar",
                 lambda name, data: str((int(data) + 1) % 5).encode() if name == relabelled_member else data)
    truncated = out / "train" / "train-000007.tar"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    (out / "val" / "val-000003.tar").unlink()

    problems = verify(out, workers=2)

    def found(*words: str) -> bool:
        return any(all(word in problem for word in words) for problem in problems)

    assert found("val/val-000001.tar", first_val_key, "does not decode")
    assert found("val/val-000003.tar", "missing")
    assert found("train/train-000007.tar", "cannot read the tar")
    assert found("train/train-000007.tar", "the manifest says 4")
    assert found("train/train-000004.tar", relabelled["__key__"], "json wnid")
    assert found("train: class", "manifest says 12")
    assert main(["--verify", str(out)]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"verify: {len(problems)} problem(s)")


# ---------------------------------------------------------------------------------------------------------------
# resume and reproducibility
# ---------------------------------------------------------------------------------------------------------------


def test_rerun_after_an_interruption_writes_only_the_missing_shards(imagenet_folder, demo_shards, tmp_path):
    out = tmp_path / "out"
    convert(imagenet_folder, out, shard_size=4, workers=1)
    # The states an interruption leaves: a shard and its record both missing, a record whose tar was not renamed
    # into place yet, temp files of unfinished shards, and no manifest.
    (out / "train" / "train-000003.tar").unlink()
    (out / "train" / "shard-info" / "train-000003.json").unlink()
    (out / "val" / "val-000002.tar").unlink()
    (out / "train" / ".train-000009.tar.tmp-12345").write_bytes(b"half a shard")
    for split in ("train", "val"):
        (out / split / "manifest.json").unlink()
    untouched = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/*.tar")}

    manifests = convert(imagenet_folder, out, shard_size=4, workers=2)

    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in untouched} == untouched
    assert not list(out.rglob(".*tmp*"))
    for split in ("train", "val"):
        clean = Manifest.load(demo_shards / split)
        assert manifests[split] == Manifest.load(out / split) == clean
        assert sorted(p.name for p in (out / split).glob("*.tar")) == [s.name for s in clean.shards]
        for name in (s.name for s in clean.shards):
            assert (out / split / name).read_bytes() == (demo_shards / split / name).read_bytes(), name


def test_rerun_with_other_settings_into_the_same_folder_is_refused(imagenet_folder, demo_shards, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(demo_shards, out)
    with pytest.raises(ShardsStateError, match="other settings"):
        convert(imagenet_folder, out, shard_size=4, quality=80)
    assert main(["--src", str(imagenet_folder), "--out", str(out), "--shard-size", "5"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "convert into an empty --out" in error


def test_val_shards_default_to_100_files_so_that_many_gpus_x_eval_workers_are_fed(tmp_path, capsys):
    src = make_imagenet_folder(tmp_path / "src", num_classes=3, train_per_class=1, val_per_class=35,
                               shorter_side_range=(32, 40))
    val = convert(src, tmp_path / "out", splits=["val"])["val"]  # the default --shard-size 1000
    assert [shard.count for shard in val.shards] == [100, 5] and val.settings["shard_size"] == 100
    assert main(["--src", str(src), "--out", str(tmp_path / "cli"), "--splits", "val", "--val-shard-size", "40"]) == 0
    assert [shard.count for shard in Manifest.load(tmp_path / "cli" / "val").shards] == [40, 40, 25]
    assert "val: 105 images in 3 shards" in capsys.readouterr().out


def test_another_seed_gives_another_sample_order(imagenet_folder, demo_shards, tmp_path):
    manifest = convert(imagenet_folder, tmp_path / "out", splits=["train"], shard_size=4, seed=1)["train"]
    sources = [json.loads(s["json"])["source"] for s in all_samples(tmp_path / "out" / "train")]
    clean = [json.loads(s["json"])["source"] for s in all_samples(demo_shards / "train")]
    assert sorted(sources) == sorted(clean) and sources != clean
    assert manifest.settings["seed"] == 1


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def test_cli_converts_prints_a_summary_and_verifies(imagenet_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--src", str(imagenet_folder), "--out", str(out), "--shard-size", "16", "--workers", "2",
                 "--val-shorter-side", "96", "--quality", "85"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "train: 60 images in 4 shards, 5 classes, 0 skipped"
    assert lines[1] == "val: 15 images in 1 shards, 5 classes, 0 skipped"
    assert lines[-1].startswith("done: train 60, val 15 images; 0 skipped;")
    assert all(min(decode(s["jpg"]).size) == 96 for s in all_samples(out / "val"))
    assert Manifest.load(out / "val").settings["quality"] == 85
    assert main(["--verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"verify: {out} is consistent (train 60, val 15 images")


@pytest.mark.parametrize("argv,message", [
    ([], "--src and --out are required"),
    (["--out", "OUT"], "--src and --out are required"),
    (["--src", "MISSING", "--out", "OUT"], "is not a directory"),
    (["--src", "EMPTY", "--out", "OUT"], "no train/ folder in"),
    (["--src", "EMPTY", "--out", "OUT", "--quality", "0"], "--quality must be within 1..100"),
    (["--src", "EMPTY", "--out", "OUT", "--workers", "two"], "invalid int value"),
    (["--src", "EMPTY", "--out", "OUT", "--splits", "test"], "--splits must be"),
])
def test_cli_bad_input_gives_one_error_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING", "EMPTY") else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("spp-cls shards: error: ")
    assert message in captured.err
    assert not (tmp_path / "OUT").exists()


def test_val_without_labels_for_flat_files_is_an_input_error(tmp_path, capsys):
    src = make_imagenet_folder(tmp_path / "src", num_classes=2, train_per_class=1, val_per_class=2,
                               val_layout="flat", shorter_side_range=(32, 40))
    (src / "LOC_val_solution.csv").unlink()
    assert main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "no LOC_val_solution.csv was found" in capsys.readouterr().err


def test_strict_conversion_raises_with_the_skipped_files_and_writes_no_manifest(tmp_path):
    src = make_imagenet_folder(tmp_path / "src", num_classes=2, train_per_class=1, val_per_class=1,
                               shorter_side_range=(32, 40))
    (src / "train" / "stray.txt").write_text("x")
    with pytest.raises(StrictSkipError) as raised:
        convert(src, tmp_path / "out", splits=["train"], strict=True)
    assert [s.path for s in raised.value.manifests["train"].skipped] == ["train/stray.txt"]
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
