"""Hostile annotation files (issue 9.2 and the issue-12 CSV trap): byte-order marks, numeric labels, labels
outside the class list, duplicate rows, non-UTF-8 bytes, unknown labels, ambiguous videos, and CSV paths that
resolve against the CSV's own folder. Videos are empty placeholder files: only their existence matters here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from videoformer.data.annotations import (class_order, read_csv, read_epic_kitchens, read_folder, read_hmdb51,
                                          read_kinetics, read_ssv2, read_ucf101)
from videoformer.data.errors import AnnotationError

BOM = "\ufeff"


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def _ucf(tmp: Path, trainlist: str, class_ind: str = "1 ApplyEyeMakeup\n2 Archery\n") -> Path:
    sp = tmp / "ucfTrainTestlist"
    sp.mkdir(exist_ok=True)
    (sp / "classInd.txt").write_text(class_ind, encoding="utf-8")
    (sp / "trainlist01.txt").write_text(trainlist, encoding="utf-8")
    _touch(tmp / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", tmp / "Archery" / "v_Archery_g01_c01.avi")
    return sp


def _kinetics(tmp: Path, rows: str, name: str = "train.csv") -> Path:
    (tmp / name).write_text("label,youtube_id,time_start,time_end,split\n" + rows, encoding="utf-8")
    return tmp / name


EPIC_HEADER = "narration_id,participant_id,video_id,start_frame,stop_frame,verb,verb_class,noun,noun_class\n"


def _every_format(tmp: Path, prefix: str = "") -> dict[str, tuple]:
    """One tiny annotation file per format, each starting with ``prefix``: {format: (reader, args, file)}."""
    _touch(tmp / "v" / "a_000000_000010.mp4", tmp / "v" / "b_000000_000010.mp4", tmp / "v" / "c.mp4",
           tmp / "v" / "1.webm", tmp / "hmdb" / "climb" / "x.avi", tmp / "P01" / "videos" / "P01_01.MP4")
    (tmp / "list.csv").write_text(prefix + "path,label\nv/c.mp4,dog\n", encoding="utf-8")
    (tmp / "k.csv").write_text(prefix + "label,youtube_id,time_start,time_end,split\ncat,a,0,10,train\n",
                               encoding="utf-8")
    sp = tmp / "ucf"
    sp.mkdir()
    (sp / "classInd.txt").write_text(prefix + "1 v\n", encoding="utf-8")
    (sp / "trainlist01.txt").write_text(prefix + "v/c.mp4 1\n", encoding="utf-8")
    hm = tmp / "hm"
    hm.mkdir()
    (hm / "climb_test_split1.txt").write_text(prefix + "x.avi 1\n", encoding="utf-8")
    (tmp / "labels.json").write_text(prefix + json.dumps({"Holding something": "0"}), encoding="utf-8")
    (tmp / "s.json").write_text(prefix + json.dumps([{"id": "1", "template": "Holding [something]"}]),
                                encoding="utf-8")
    (tmp / "e.csv").write_text(prefix + EPIC_HEADER + "P01_01_0,P01,P01_01,1,9,open,3,door,8\n", encoding="utf-8")
    return {
        "csv": (read_csv, (tmp / "list.csv",), tmp / "list.csv"),
        "kinetics": (read_kinetics, (tmp / "k.csv", tmp / "v"), tmp / "k.csv"),
        "ucf101 classInd": (read_ucf101, (sp, tmp), sp / "classInd.txt"),
        "hmdb51": (read_hmdb51, (hm, tmp / "hmdb"), hm / "climb_test_split1.txt"),
        "ssv2": (read_ssv2, (tmp / "labels.json", tmp / "s.json", tmp / "v"), tmp / "s.json"),
        "epic": (read_epic_kitchens, (tmp / "e.csv", tmp), tmp / "e.csv"),
    }


@pytest.mark.parametrize("fmt", ["csv", "kinetics", "ucf101 classInd", "hmdb51", "ssv2", "epic"])
def test_bom_is_stripped_in_every_format(tmp_path: Path, fmt: str) -> None:
    reader, args, _ = _every_format(tmp_path, prefix=BOM)[fmt]
    ann = reader(*args)
    assert len(ann.records) == 1 and ann.records[0].label in (0, (3, 8))
    classes = ann.classes if isinstance(ann.classes, list) else ann.classes["verb"]
    assert not any(BOM in c or c == "label" for c in classes)


@pytest.mark.parametrize("fmt", ["csv", "kinetics", "ucf101 classInd", "hmdb51", "ssv2", "epic"])
def test_non_utf8_names_file_and_line(tmp_path: Path, fmt: str) -> None:
    reader, args, path = _every_format(tmp_path)[fmt]
    lines = path.read_bytes().split(b"\n")
    lines[-2 if len(lines) > 2 else 0] += b" caf\xe9"  # Latin-1 e-acute on the last line with content
    path.write_bytes(b"\n".join(lines))
    line = len(lines) - 1 if len(lines) > 2 else 1
    with pytest.raises(AnnotationError, match=rf"{path.name}: line {line}: not UTF-8 \(byte 0xe9"):
        reader(*args)


def test_bom_header_keeps_train_and_val_labels_identical(tmp_path: Path) -> None:
    """The issue's case: with a BOM the header became a class 'label' and shifted every index."""
    _touch(*(tmp_path / f"{i}.mp4" for i in range(12)))
    rows = "".join(f"{i}.mp4,{['jump', 'run', 'swim'][i % 3]}\n" for i in range(12))
    (tmp_path / "train.csv").write_text(BOM + "path,label\n" + rows, encoding="utf-8")
    (tmp_path / "val.csv").write_text("path,label\n" + rows, encoding="utf-8")
    train = read_csv(tmp_path / "train.csv")
    val = read_csv(tmp_path / "val.csv", classes=train.classes)
    assert train.classes == ["jump", "run", "swim"] and len(train) == 12
    assert [r.label for r in train.records] == [r.label for r in val.records] == [i % 3 for i in range(12)]


def test_numeric_class_names_sort_numerically(tmp_path: Path) -> None:
    names = [str(i) for i in range(12)]
    assert class_order(reversed(names)) == names and class_order(["b", "a", "10", "9"]) == ["10", "9", "a", "b"]
    for n in names:
        _touch(tmp_path / "folders" / n / "x.mp4")
    assert read_folder(tmp_path / "folders").classes == names
    ann = read_kinetics(_kinetics(tmp_path, "".join(f"{n},y{n},0,10,train\n" for n in names)), tmp_path,
                        check_exists=False)
    assert ann.classes == names and [r.label for r in ann.records] == list(range(12))
    # HMDB-51 classes sorted by name, not by split-file name ("climb" < "climb_stairs")
    (tmp_path / "hm").mkdir()
    for c in ("climb_stairs", "climb"):
        (tmp_path / "hm" / f"{c}_test_split1.txt").write_text(f"{c}.avi 1\n")
    assert read_hmdb51(tmp_path / "hm", tmp_path, check_exists=False).classes == ["climb", "climb_stairs"]


def test_label_outside_a_given_class_list_is_an_error(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4", tmp_path / "b.mp4")
    (tmp_path / "names.csv").write_text("path,label\na.mp4,dog\nb.mp4,bird\n")
    with pytest.raises(AnnotationError, match=r"names.csv: line 3: label 'bird' is not one of the 2 classes; "
                                              r"close matches: 'bird_'"):
        read_csv(tmp_path / "names.csv", classes=["bird_", "dog"])
    (tmp_path / "ints.csv").write_text("a.mp4,1\nb.mp4,7\n")
    with pytest.raises(AnnotationError, match="ints.csv: line 2: label '7' is not one of the 2 classes"):
        read_csv(tmp_path / "ints.csv", classes=["cat", "dog"])
    assert [r.label for r in read_csv(tmp_path / "ints.csv").records] == [1, 7]  # no list: integers are indices
    k = _kinetics(tmp_path, "abseiling,a,0,10,train\nair drumming,b,0,10,train\n")
    with pytest.raises(AnnotationError, match=r"train.csv: line 3: label 'air drumming' is not one of the 1 "):
        read_kinetics(k, tmp_path, classes=["abseiling"], check_exists=False)


def test_unknown_label_names_file_line_and_close_matches(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    (tmp_path / "val.csv").write_text("path,label\na.mp4,dgo\n")
    with pytest.raises(AnnotationError, match=r"val.csv: line 2: label 'dgo' is not one of the 2 classes; "
                                              r"close matches: 'dog'") as err:
        read_csv(tmp_path / "val.csv", classes=["cat", "dog"])
    assert not isinstance(err.value, KeyError)
    sp = _ucf(tmp_path, "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\nArchry/v_Archery_g01_c01.avi 2\n")
    with pytest.raises(AnnotationError, match=r"trainlist01.txt: line 2: label 'Archry'.*close matches: 'Archery'"):
        read_ucf101(sp, tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something": "1"}))
    (tmp_path / "s.json").write_text('[\n {"id": "1", "template": "Holding [something]"},\n'
                                     ' {"id": "2",\n  "template": "Pusing [something]"}\n]\n')
    with pytest.raises(AnnotationError, match=r"s.json: line 3: label 'Pusing something'.*'Pushing something'"):
        read_ssv2(tmp_path / "labels.json", tmp_path / "s.json", tmp_path, check_exists=False)
    (tmp_path / "bad.json").write_text('[\n {"id": "1"},\n {"id": 2,,}\n]')
    with pytest.raises(AnnotationError, match=r"bad.json: line 3: bad JSON"):
        read_ssv2(tmp_path / "labels.json", tmp_path / "bad.json", tmp_path, check_exists=False)


def test_duplicate_rows_dropped_or_refused(tmp_path: Path, caplog) -> None:
    _touch(tmp_path / "a.mp4", tmp_path / "b.mp4")
    (tmp_path / "dup.csv").write_text("path,label\na.mp4,cat\nb.mp4,dog\na.mp4,cat\na.mp4,cat\n")
    with caplog.at_level(logging.WARNING):
        ann = read_csv(tmp_path / "dup.csv")
    assert [Path(r.path).name for r in ann.records] == ["a.mp4", "b.mp4"] and ann.duplicates == 2
    assert "dup.csv: 2 duplicate rows dropped (e.g. line 4 repeats line 2)" in caplog.text
    (tmp_path / "seg.csv").write_text("a.mp4,cat,0,1\na.mp4,cat,1,2\n")  # other segments of one video: kept
    assert len(read_csv(tmp_path / "seg.csv")) == 2
    (tmp_path / "conflict.csv").write_text("path,label\na.mp4,cat\nb.mp4,dog\na.mp4,dog\n")
    with pytest.raises(AnnotationError, match=r"conflict.csv: line 4: .*a.mp4 is labelled 'dog' here but 'cat' "
                                              r"on line 2"):
        read_csv(tmp_path / "conflict.csv")
    sp = _ucf(tmp_path, "Archery/v_Archery_g01_c01.avi 2\nArchery/v_Archery_g01_c01.avi 2\n")
    assert read_ucf101(sp, tmp_path).duplicates == 1
    (tmp_path / "hm").mkdir()
    (tmp_path / "hm" / "climb_test_split1.txt").write_text("x.avi 1\n")
    (tmp_path / "hm" / "run_test_split1.txt").write_text("x.avi 1\n")
    _touch(tmp_path / "h" / "climb" / "x.avi")
    assert len(read_hmdb51(tmp_path / "hm", tmp_path / "h")) == 1  # different folders: different videos
    (tmp_path / "labels.json").write_text(json.dumps({"A": "0", "B": "1"}))
    (tmp_path / "s.json").write_text(json.dumps([{"id": "1", "template": "A"}, {"id": "1", "template": "B"}]))
    with pytest.raises(AnnotationError, match=r"s.json: line 1: .* labelled 'B' here but 'A' on line 1"):
        read_ssv2(tmp_path / "labels.json", tmp_path / "s.json", tmp_path, check_exists=False)
    (tmp_path / "e.csv").write_text(EPIC_HEADER + "P01_01_0,P01,P01_01,1,9,open,3,door,8\n"
                                    "P01_01_1,P01,P01_01,1,9,close,4,door,8\n"  # another narration, same segment
                                    "P01_01_0,P01,P01_01,1,9,open,3,door,8\n")
    ek = read_epic_kitchens(tmp_path / "e.csv", tmp_path, check_exists=False)
    assert [r.label for r in ek.records] == [(3, 8), (4, 8)] and ek.duplicates == 1


def test_listed_video_found_under_another_extension_never_guessed(tmp_path: Path) -> None:
    """The extract cache holds x.mp4 for a listed x.avi; two candidates are an error, not a choice."""
    sp = _ucf(tmp_path, "Archery/v_Archery_g02_c01.avi 2\n")
    _touch(tmp_path / "Archery" / "v_Archery_g02_c01.mp4")
    assert read_ucf101(sp, tmp_path).records[0].path == str(tmp_path / "Archery" / "v_Archery_g02_c01.mp4")
    _touch(tmp_path / "Archery" / "v_Archery_g02_c01.mkv")
    with pytest.raises(AnnotationError, match=r"trainlist01.txt: line 1: ambiguous video, 2 files match"):
        read_ucf101(sp, tmp_path)
    k = _kinetics(tmp_path, "abseiling,yid,0,10,train\n")
    _touch(tmp_path / "k" / "yid_000000_000010.mp4", tmp_path / "k" / "abseiling" / "yid_000000_000010.mp4")
    with pytest.raises(AnnotationError, match=r"train.csv: line 2: ambiguous video"):
        read_kinetics(k, tmp_path / "k")


def test_csv_video_paths_resolve_against_the_csv_folder(tmp_path: Path) -> None:
    """Issue 12: data.val pointing at another folder's manifest must read that folder's videos, never the
    same-named videos under data.root."""
    from videoformer.engine.config import ConfigError, DataConfig
    from videoformer.engine.data import read_split

    for split in ("train", "val"):
        _touch(*(tmp_path / split / "videos" / f"{i}.mp4" for i in range(3)))
        (tmp_path / split / "manifest.csv").write_text("path,label\n" + "".join(
            f"videos/{i}.mp4,{i}\n" for i in range(3)))
    data = DataConfig(format="csv", root=str(tmp_path / "train"), train="manifest.csv",
                      val=str(tmp_path / "val" / "manifest.csv"))
    train = read_split(data, "train")
    val = read_split(data, "val", train.classes)
    assert all(r.path.startswith(str(tmp_path / "train")) for r in train.records) and len(train) == 3
    assert all(r.path.startswith(str(tmp_path / "val")) for r in val.records) and len(val) == 3
    (tmp_path / "train" / "cache.csv").write_text("path,source\nvideos/0.mp4,/data/0.avi\n")
    with pytest.raises(AnnotationError, match=r"cache.csv: line 1: expected the header path,label\[,start,end\], "
                                              r"got path,source \(the manifest.csv of videoformer extract"):
        read_split(DataConfig(format="csv", root=str(tmp_path / "train"), train="cache.csv"), "train")
    (tmp_path / "elsewhere.csv").write_text("path,label\nvideos/0.mp4,0\n")  # relative to data.root only
    with pytest.raises(ConfigError, match=r"1 listed videos missing; relative paths are read from the CSV's "
                                          rf"folder {tmp_path}"):
        read_split(DataConfig(format="csv", root=str(tmp_path / "train"), val=str(tmp_path / "elsewhere.csv")),
                   "val")
