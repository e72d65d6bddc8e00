"""Annotation formats (small generated datasets) and the skipping datasets with DataLoader workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from videoformer.data.annotations import (read_csv, read_epic_kitchens, read_folder, read_hmdb51, read_kinetics,
                                          read_ssv2, read_ucf101)
from videoformer.data.compressed import reencode_mpeg4
from videoformer.data.datasets import CompressedVideoDataset, DatasetFailure, VideoDataset
from videoformer.data.errors import AnnotationError
from videoformer.data.synthetic import moving_square_frames, tone, write_video
from videoformer.data.transforms import CompressedTransform, VideoTransform


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """One 20-frame 48x64 H.264 clip with audio, copied around by the format fixtures."""
    d = tmp_path_factory.mktemp("src")
    write_video(d / "a.mp4", moving_square_frames(20, 48, 64, size=12), fps=10, audio=tone(2.0))
    return d / "a.mp4"


def _put(src: Path, *paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, p)


def test_kinetics_csv(tmp_path, src):
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,--07WQ2iBlw,1,11,train,0\n"
        "air drumming,-0ZxfuTp0Mo,40,50,train,0\n"
        "abseiling,zz_missing01,0,10,train,0\n")
    _put(src, tmp_path / "v" / "abseiling" / "--07WQ2iBlw_000001_000011.mp4",
         tmp_path / "v" / "-0ZxfuTp0Mo_000040_000050.mp4")
    ann = read_kinetics(tmp_path / "train.csv", tmp_path / "v")
    assert ann.classes == ["abseiling", "air drumming"] and ann.missing == 1
    assert [r.label for r in ann.records] == [0, 1] and all(Path(r.path).is_file() for r in ann.records)
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\n-0ZxfuTp0Mo,40,50,test\n")
    assert read_kinetics(tmp_path / "test.csv", tmp_path / "v", classes=ann.classes).records[0].label == -1
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nx,abc,one,2,train\n")
    with pytest.raises(AnnotationError, match="bad.csv.*line 2"):
        read_kinetics(tmp_path / "bad.csv", tmp_path / "v")


def test_ucf101_splits(tmp_path, src):
    sp = tmp_path / "ucfTrainTestlist"
    sp.mkdir()
    (sp / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    for n in (1, 2, 3):
        (sp / f"trainlist0{n}.txt").write_text(
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 2\n")
        (sp / f"testlist0{n}.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g08_c01.avi",
                 "Archery/v_Archery_g01_c01.avi"):
        _put(src, tmp_path / "UCF-101" / name)
    tr = read_ucf101(sp, tmp_path / "UCF-101", split=2, train=True)
    te = read_ucf101(sp, tmp_path / "UCF-101", split=3, train=False)
    assert tr.classes == ["ApplyEyeMakeup", "Archery"] and [r.label for r in tr.records] == [0, 1]
    assert [r.label for r in te.records] == [1]
    (sp / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 1\n")
    with pytest.raises(AnnotationError, match="disagrees"):
        read_ucf101(sp, tmp_path / "UCF-101", split=1)
    with pytest.raises(ValueError):
        read_ucf101(sp, tmp_path / "UCF-101", split=4)


def test_hmdb51_splits(tmp_path, src):
    sp = tmp_path / "splits"
    sp.mkdir()
    (sp / "brush_hair_test_split1.txt").write_text("a_brush.avi 1 \nb_brush.avi 2 \nc_brush.avi 0 \n")
    (sp / "cartwheel_test_split1.txt").write_text("a_cart.avi 1 \nb_cart.avi 2 \n")
    _put(src, *(tmp_path / "hmdb" / p for p in ("brush_hair/a_brush.avi", "brush_hair/b_brush.avi",
                                                  "cartwheel/a_cart.avi", "cartwheel/b_cart.avi")))
    tr = read_hmdb51(sp, tmp_path / "hmdb", split=1, train=True)
    te = read_hmdb51(sp, tmp_path / "hmdb", split=1, train=False)
    assert tr.classes == ["brush_hair", "cartwheel"]
    assert [(Path(r.path).name, r.label) for r in tr.records] == [("a_brush.avi", 0), ("a_cart.avi", 1)]
    assert [Path(r.path).name for r in te.records] == ["b_brush.avi", "b_cart.avi"]
    with pytest.raises(AnnotationError):
        read_hmdb51(sp, tmp_path / "hmdb", split=2)


def test_ssv2_json(tmp_path, src):
    (tmp_path / "labels.json").write_text(json.dumps({"Approaching something with your camera": "0",
                                                     "Holding something next to something": "1"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks"]},
        {"id": "42326", "label": "approaching a cup with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a cup"]}]))
    _put(src, tmp_path / "videos" / "78687.webm", tmp_path / "videos" / "42326.webm")
    ann = read_ssv2(tmp_path / "labels.json", tmp_path / "train.json", tmp_path / "videos")
    assert [r.label for r in ann.records] == [1, 0] and ann.classes[1] == "Holding something next to something"
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(AnnotationError, match="broken.json"):
        read_ssv2(tmp_path / "labels.json", tmp_path / "broken.json", tmp_path / "videos")


def test_epic_kitchens_csv(tmp_path, src):
    (tmp_path / "EPIC_100_train.csv").write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
        'P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,3,12,open door,open,3,door,8,[\'door\'],[8]\n'
        'P01_01_1,P01,P01_01,00:00:02.629,00:00:04.37,00:00:06.17,5,20,"turn on light",turn-on,6,light,114,'
        '"[\'light\', \'switch\']","[114, 2]"\n')
    _put(src, tmp_path / "EK" / "P01" / "videos" / "P01_01.MP4")
    ann = read_epic_kitchens(tmp_path / "EPIC_100_train.csv", tmp_path / "EK")
    assert [r.label for r in ann.records] == [(3, 8), (6, 114)]
    assert (ann.records[0].start_frame, ann.records[0].stop_frame) == (2, 12)
    assert ann.classes["verb"][3] == "open" and ann.classes["noun"][114] == "light"
    ds = VideoDataset(ann.records, num_frames=4, sampler="uniform", train=False)
    clip, label = ds[1]
    assert clip.shape == (3, 4, 48, 64) and label.tolist() == [6, 114]


def test_generic_csv_and_folder(tmp_path, src):
    _put(src, tmp_path / "d" / "jump" / "x.mp4", tmp_path / "d" / "run" / "y.mp4", tmp_path / "d" / "run" / "z.mp4")
    (tmp_path / "d" / "run" / "notes.txt").write_text("not a video")
    folder = read_folder(tmp_path / "d")
    assert folder.classes == ["jump", "run"] and [r.label for r in folder.records] == [0, 1, 1]
    (tmp_path / "d" / "list.csv").write_text("path,label,start,end\njump/x.mp4,run,0.5,1.5\nrun/y.mp4,jump,0,1\n")
    ann = read_csv(tmp_path / "d" / "list.csv")
    assert ann.classes == ["jump", "run"] and [r.label for r in ann.records] == [1, 0]
    assert (ann.records[0].start, ann.records[0].end) == (0.5, 1.5)
    (tmp_path / "d" / "ints.csv").write_text("jump/x.mp4,3\nrun/y.mp4,0\n")
    assert [r.label for r in read_csv(tmp_path / "d" / "ints.csv").records] == [3, 0]
    (tmp_path / "d" / "bad.csv").write_text("jump/x.mp4\n")
    with pytest.raises(AnnotationError, match="bad.csv"):
        read_csv(tmp_path / "d" / "bad.csv")
    # start/end seconds restrict sampling: 10 fps, [0.5, 1.5) s = frames 5..14
    ds = VideoDataset(ann.records, num_frames=10, sampler="dense", stride=1, train=False)
    clip, _ = ds[0]
    full, _ = VideoDataset(folder.records[:1], num_frames=20, sampler="dense", stride=1, train=False)[0]
    torch.testing.assert_close(clip, full[:, 5:15])


def test_dataset_skips_and_counts_bad_videos_in_workers(tmp_path, src):
    good = [tmp_path / f"g{i}.mp4" for i in range(6)]
    _put(src, *good)
    (tmp_path / "bad.mp4").write_bytes(b"definitely not a video" * 10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    from videoformer.data.annotations import VideoRecord

    records = [VideoRecord(str(p), i % 2) for i, p in enumerate(good)]
    records += [VideoRecord(str(tmp_path / "bad.mp4"), 0), VideoRecord(str(tmp_path / "empty.mp4"), 1)]
    ds = VideoDataset(records, num_frames=4, stride=2, train=True, seed=0, max_fail_fraction=0.5, min_attempts=4,
                      transform=VideoTransform(size=32, train=True))
    # regression: decoded frames left in cyclic garbage in the parent used to hang forked workers
    # (their swscale slice threads do not exist after fork); the loader times out instead of hanging
    import av

    with av.open(str(good[0])) as c:
        frame = next(c.decode(video=0))
    from videoformer.data.video import to_rgb

    to_rgb(frame)
    cycle = [frame]
    cycle.append(cycle)
    del cycle, frame
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False, timeout=60)
    batches = list(loader)
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (8, 3, 4, 32, 32) and torch.isfinite(x).all()
    ds.stats.attempts = ds.stats.failures = 0
    assert ds[6][0].shape == (3, 4, 32, 32) and ds.stats.failures == 1  # bad.mp4 replaced by a good one
    strict = VideoDataset(records[6:] + records[:1], num_frames=4, max_fail_fraction=0.1, min_attempts=1)
    with pytest.raises(DatasetFailure, match="unreadable"):
        strict[0]


def test_multiclip_test_views(tmp_path, src):
    from videoformer.data.annotations import VideoRecord

    ds = VideoDataset([VideoRecord(str(src), 0)], num_frames=4, stride=2, train=False, num_clips=3)
    views, _ = ds[0]
    assert views.shape == (3, 3, 4, 48, 64)
    assert not torch.equal(views[0], views[2])
    ds.transform = VideoTransform(size=32, train=False, three_crop=True)
    grid, _ = ds[0]
    assert grid.shape == (9, 3, 4, 32, 32)  # 3 temporal clips x (left, centre, right)
    assert not torch.equal(grid[0], grid[2]) and not torch.equal(grid[0], grid[3])


def test_test_views_are_the_multiview_plan(src):
    """VideoDataset clips x VideoTransform crops = ``multiview_indices``' views (one plan of K x S views)."""
    from videoformer.data.annotations import VideoRecord
    from videoformer.data.sampling import multiview_indices
    from videoformer.data.transforms import crop, normalize, short_side_scale
    from videoformer.data.video import read_all_frames

    ds = VideoDataset([VideoRecord(str(src), 0)], num_frames=4, stride=3, train=False, num_clips=2,
                      transform=VideoTransform(size=32, train=False, three_crop=True, short_side=40))
    grid, _ = ds[0]
    scaled = short_side_scale(torch.from_numpy(read_all_frames(src)).permute(3, 0, 1, 2), 40)  # (3, N, 40, 53)
    views = multiview_indices(scaled.shape[1], 4, 3, 2, *scaled.shape[-2:], crop_size=32, num_crops=3)
    assert grid.shape[0] == len(views) == 6
    for got, v in zip(grid, views):
        want = normalize(crop(scaled[:, torch.from_numpy(v.indices)], v.top, v.left, v.size, v.size).float() / 255)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_compressed_dataset_with_loader(tmp_path, src):
    from videoformer.data.annotations import VideoRecord

    paths = [reencode_mpeg4(src, tmp_path / f"c{i}.mp4", size=(64, 48)) for i in range(2)]
    records = [VideoRecord(p, i) for i, p in enumerate(paths)] + [VideoRecord(str(tmp_path / "missing.mp4"), 0)]
    ds = CompressedVideoDataset(records, num_segments=4, train=True, seed=1, max_fail_fraction=0.5, min_attempts=1,
                                transform=CompressedTransform(size=32, train=True))
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=1)))
    assert batch["iframe"].shape == (3, 4, 3, 32, 32) and batch["mv"].shape == (3, 4, 2, 32, 32)
    assert batch["residual"].shape == (3, 4, 3, 32, 32) and batch["audio"].shape == (3, 4, 128)
    assert batch["has_audio"].all() and batch["mv"].abs().max() <= 0.5
    raw = CompressedVideoDataset(records[:1], num_segments=4, train=False, audio=False)[0]
    assert raw["iframe"].dtype == torch.uint8 and raw["mv"].dtype == torch.int16
    np.testing.assert_array_equal(raw["frame_indices"].numpy(), [2, 7, 12, 17])


def test_compressed_batch_feeds_mmvit(tmp_path, src):
    """End to end: re-encode -> CompressedVideoDataset -> DataLoader -> MM-ViT (tiny) logits."""
    registry = pytest.importorskip("videoformer.models.registry")
    from videoformer.data.annotations import VideoRecord

    path = reencode_mpeg4(src, tmp_path / "c.mp4", size=(64, 48))
    ds = CompressedVideoDataset([VideoRecord(path, 3)] * 2, num_segments=4, train=True, seed=0,
                                transform=CompressedTransform(size=32, train=True))
    batch = next(iter(DataLoader(ds, batch_size=2)))
    model = registry.create_model("mmvit_tiny_merged")
    logits = model(batch)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()


def test_rgb_batch_feeds_vivit_and_mixup(tmp_path, src):
    """End to end: folder dataset -> VideoDataset + VideoTransform -> DataLoader -> Mixup -> ViViT (tiny)."""
    registry = pytest.importorskip("videoformer.models.registry")
    from videoformer.data.mixup import Mixup

    _put(src, tmp_path / "d" / "a" / "x.mp4", tmp_path / "d" / "b" / "y.mp4")
    ds = VideoDataset(read_folder(tmp_path / "d").records, num_frames=4, stride=2, train=True, seed=0,
                      transform=VideoTransform(size=32, train=True, randaug_layers=2))
    x, y = next(iter(DataLoader(ds, batch_size=2)))
    x, soft = Mixup(num_classes=10, mixup_alpha=0.3, cutmix_alpha=0.0, label_smoothing=0.3)(x, y)
    model = registry.create_model("vivit_tiny_fe")
    logits = model(x)  # (B, C, T, H, W) as the models take it
    assert logits.shape == (2, 10)
    loss = torch.sum(-soft * torch.log_softmax(logits, -1), -1).mean()
    loss.backward()
    assert torch.isfinite(loss)
