"""Annotation readers for the published formats -> a list of :class:`VideoRecord`.

Kinetics-400/600 CSV, UCF-101 (classInd + train/testlist 1-3), HMDB-51 split files,
Something-Something v2 JSON, Epic-Kitchens-100 CSV (verb / noun), a generic CSV
``path,label[,start,end]`` and a folder layout ``root/<class>/<video>``. Labels are 0-based ints;
``classes`` lists the names in label order. Records whose video is missing are dropped and counted
(``missing=``) unless ``check_exists=False``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from videoformer.data.errors import AnnotationError

log = logging.getLogger(__name__)

__all__ = [
    "VideoRecord", "Annotations", "read_kinetics", "read_ucf101", "read_hmdb51", "read_ssv2",
    "read_epic_kitchens", "read_csv", "read_folder", "VIDEO_EXTENSIONS",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")


@dataclass(frozen=True)
class VideoRecord:
    """One sample: a video file, its label and an optional time (seconds) or frame range.

    ``label`` is an int, or a tuple of ints for multi-head datasets (Epic-Kitchens: (verb, noun)).
    ``label == -1`` marks an unlabelled (test-split) sample.
    """

    path: str
    label: int | tuple[int, ...]
    start: float | None = None
    end: float | None = None
    start_frame: int | None = None
    stop_frame: int | None = None
    id: str = ""


@dataclass
class Annotations:
    records: list[VideoRecord]
    classes: list[str] | dict[str, list[str]]
    missing: int = 0
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)


def _keep(records: list[VideoRecord], check_exists: bool, source: str, classes) -> Annotations:
    if not check_exists:
        return Annotations(records, classes, 0, source)
    kept = [r for r in records if os.path.isfile(r.path)]
    missing = len(records) - len(kept)
    if missing:
        log.warning("%s: %d of %d videos not found; skipped", source, missing, len(records))
    return Annotations(kept, classes, missing, source)


def _find(root: Path, stem_or_name: str, subdirs: list[str]) -> str:
    """Path of ``stem_or_name`` under root (or root/subdir), trying the known extensions if needed."""
    for d in subdirs:
        base = root / d / stem_or_name if d else root / stem_or_name
        if base.suffix.lower() in VIDEO_EXTENSIONS and base.is_file():
            return str(base)
        for ext in VIDEO_EXTENSIONS + tuple(e.upper() for e in VIDEO_EXTENSIONS):
            cand = base.with_name(base.name + ext)
            if cand.is_file():
                return str(cand)
    d = subdirs[0]
    return str((root / d / stem_or_name) if d else (root / stem_or_name))


def _rows(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise AnnotationError(path, "empty CSV (no header)")
        return list(reader)


def read_kinetics(csv_path: str | os.PathLike, root: str | os.PathLike, classes: list[str] | None = None,
                  check_exists: bool = True) -> Annotations:
    """Kinetics-400/600/700 CSV: ``label,youtube_id,time_start,time_end,split[,is_cc]``.

    Videos are ``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`` (the official downloader's
    naming) in ``root`` or ``root/<label>/``; a plain ``{youtube_id}.<ext>`` is accepted too. Test CSVs
    without a label column give label -1. ``classes`` defaults to the sorted labels of this file
    (pass the training classes when reading validation / test).
    """
    rows = _rows(csv_path)
    need = {"youtube_id", "time_start", "time_end"}
    if not need <= set(rows[0] if rows else need):
        raise AnnotationError(csv_path, f"Kinetics CSV needs columns {sorted(need)}, got {list(rows[0])}")
    names = classes or sorted({r["label"] for r in rows if r.get("label")})
    index = {n: i for i, n in enumerate(names)}
    root = Path(root)
    records = []
    for line, r in enumerate(rows, start=2):
        try:
            t0, t1 = int(float(r["time_start"])), int(float(r["time_end"]))
        except ValueError as e:
            raise AnnotationError(csv_path, f"line {line}: bad time_start/time_end: {e}") from e
        label = r.get("label")
        if label and label not in index:
            raise AnnotationError(csv_path, f"line {line}: label {label!r} not in the class list")
        stem = f"{r['youtube_id']}_{t0:06d}_{t1:06d}"
        subdirs = ["", label or ""] if label else [""]
        path = _find(root, stem, subdirs)
        if not os.path.isfile(path):
            path = _find(root, r["youtube_id"], subdirs)
        records.append(VideoRecord(path, index[label] if label else -1, id=stem))
    return _keep(records, check_exists, str(csv_path), names)


def _read_class_ind(path: Path) -> list[str]:
    if not path.is_file():
        raise AnnotationError(path, "classInd.txt not found")
    names = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(path, f"line {line_no}: expected '<index> <ClassName>', got {line!r}")
        names[int(parts[0])] = parts[1]
    return [names[i] for i in sorted(names)]


def read_ucf101(split_dir: str | os.PathLike, root: str | os.PathLike, split: int = 1, train: bool = True,
                check_exists: bool = True) -> Annotations:
    """UCF-101: ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based) and ``trainlist0N.txt``
    ("ApplyEyeMakeup/v_..._c01.avi 1") / ``testlist0N.txt`` (no label: from the folder) for N in 1-3."""
    if split not in (1, 2, 3):
        raise ValueError(f"UCF-101 has splits 1-3, got {split}")
    split_dir, root = Path(split_dir), Path(root)
    classes = _read_class_ind(split_dir / "classInd.txt")
    index = {n: i for i, n in enumerate(classes)}
    list_path = split_dir / f"{'train' if train else 'test'}list0{split}.txt"
    if not list_path.is_file():
        raise AnnotationError(list_path, "split list not found")
    records = []
    for line_no, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        rel = line.split()[0]
        folder = rel.split("/")[0]
        if folder not in index:
            raise AnnotationError(list_path, f"line {line_no}: class folder {folder!r} not in classInd.txt")
        if len(line.split()) > 1 and int(line.split()[1]) - 1 != index[folder]:
            raise AnnotationError(list_path, f"line {line_no}: label {line.split()[1]} disagrees with {folder}")
        records.append(VideoRecord(str(root / rel), index[folder], id=Path(rel).stem))
    return _keep(records, check_exists, str(list_path), classes)


def read_hmdb51(split_dir: str | os.PathLike, root: str | os.PathLike, split: int = 1, train: bool = True,
                check_exists: bool = True) -> Annotations:
    """HMDB-51: ``<class>_test_split<N>.txt`` files with lines "<video>.avi <id>", id 1 = train,
    2 = test, 0 = unused; videos in ``root/<class>/<video>``. Classes are sorted by name."""
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB-51 has splits 1-3, got {split}")
    split_dir, root = Path(split_dir), Path(root)
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise AnnotationError(split_dir, f"no *_test_split{split}.txt files")
    pat = re.compile(rf"^(.*)_test_split{split}\.txt$")
    classes = [pat.match(f.name).group(1) for f in files]
    want = "1" if train else "2"
    records = []
    for label, (name, f) in enumerate(zip(classes, files)):
        for line_no, line in enumerate(f.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in "012":
                raise AnnotationError(f, f"line {line_no}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == want:
                records.append(VideoRecord(str(root / name / parts[0]), label, id=Path(parts[0]).stem))
    return _keep(records, check_exists, str(split_dir), classes)


def read_ssv2(labels_json: str | os.PathLike, split_json: str | os.PathLike, root: str | os.PathLike,
              ext: str = ".webm", check_exists: bool = True) -> Annotations:
    """Something-Something v2: ``labels.json`` {template: "index"} and ``train.json`` /
    ``validation.json`` lists of {"id", "label", "template", "placeholders"}; the class is the template
    with its brackets removed. Videos are ``root/<id>.webm``. Test JSON (ids only) gives label -1."""
    labels, items = _json(labels_json), _json(split_json)
    if not isinstance(labels, dict) or not isinstance(items, list):
        raise AnnotationError(split_json, "expected labels.json as an object and the split JSON as a list")
    index = {k: int(v) for k, v in labels.items()}
    classes = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])]
    records = []
    for n, it in enumerate(items):
        if "id" not in it:
            raise AnnotationError(split_json, f"item {n}: no 'id'")
        label = -1
        if "template" in it:
            name = it["template"].replace("[", "").replace("]", "")
            if name not in index:
                raise AnnotationError(split_json, f"item {n}: template {name!r} not in {labels_json}")
            label = index[name]
        records.append(VideoRecord(str(Path(root) / f"{it['id']}{ext}"), label, id=str(it["id"])))
    return _keep(records, check_exists, str(split_json), classes)


def _json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise AnnotationError(path, "annotation file not found") from e
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"bad JSON: {e}") from e


def read_epic_kitchens(csv_path: str | os.PathLike, root: str | os.PathLike, check_exists: bool = True) -> Annotations:
    """Epic-Kitchens-100 CSV (``EPIC_100_train.csv`` ...): label = (verb_class, noun_class), frame range
    [start_frame, stop_frame] (1-based, inclusive, as published; stored 0-based half-open). Videos are
    ``root/<participant_id>/videos/<video_id>.MP4`` or ``root/<video_id>.<ext>``."""
    rows = _rows(csv_path)
    need = {"video_id", "start_frame", "stop_frame"}
    if rows and not need <= set(rows[0]):
        raise AnnotationError(csv_path, f"Epic-Kitchens CSV needs columns {sorted(need)}, got {list(rows[0])}")
    root = Path(root)
    verbs: dict[int, str] = {}
    nouns: dict[int, str] = {}
    records = []
    for line, r in enumerate(rows, start=2):
        try:
            s, e = int(r["start_frame"]), int(r["stop_frame"])
            label = (int(r["verb_class"]), int(r["noun_class"])) if r.get("verb_class") else (-1, -1)
        except ValueError as err:
            raise AnnotationError(csv_path, f"line {line}: {err}") from err
        if e < s:
            raise AnnotationError(csv_path, f"line {line}: stop_frame {e} < start_frame {s}")
        if r.get("verb_class"):
            verbs[label[0]], nouns[label[1]] = r.get("verb", ""), r.get("noun", "")
        vid, pid = r["video_id"], r.get("participant_id") or r["video_id"].split("_")[0]
        path = _find(root, vid, [f"{pid}/videos", pid, ""])
        records.append(VideoRecord(path, label, start_frame=s - 1, stop_frame=e,
                                   id=r.get("narration_id", f"{vid}_{line}")))
    classes = {"verb": [verbs.get(i, "") for i in range(max(verbs, default=-1) + 1)],
               "noun": [nouns.get(i, "") for i in range(max(nouns, default=-1) + 1)]}
    return _keep(records, check_exists, str(csv_path), classes)


def read_csv(csv_path: str | os.PathLike, root: str | os.PathLike | None = None, classes: list[str] | None = None,
             check_exists: bool = True) -> Annotations:
    """Generic ``path,label[,start,end]`` CSV (header optional; label an int or a class name; start / end
    in seconds). Relative paths are resolved against ``root`` (default: the CSV's folder)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise AnnotationError(csv_path, "annotation file not found")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    root = Path(root) if root is not None else csv_path.parent
    named = any(not r[1].strip().lstrip("-").isdigit() for r in rows if len(r) > 1)
    names = classes or (sorted({r[1].strip() for r in rows}) if named else None)
    index = {n: i for i, n in enumerate(names)} if names else {}
    records = []
    for line, r in enumerate(rows, start=1):
        if len(r) not in (2, 4):
            raise AnnotationError(csv_path, f"row {line}: expected path,label[,start,end], got {r}")
        lab = r[1].strip()
        try:
            label = index[lab] if named else int(lab)
            start, end = (float(r[2]), float(r[3])) if len(r) == 4 else (None, None)
        except (KeyError, ValueError) as e:
            raise AnnotationError(csv_path, f"row {line}: {e!r}") from e
        p = Path(r[0].strip())
        records.append(VideoRecord(str(p if p.is_absolute() else root / p), label, start, end, id=p.stem))
    if names is None:
        names = [str(i) for i in range(max((r.label for r in records), default=-1) + 1)]
    return _keep(records, check_exists, str(csv_path), names)


def read_folder(root: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> Annotations:
    """``root/<class>/<video>``: classes are the sorted sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(root, "dataset folder not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    records = [VideoRecord(str(p), label, id=p.stem)
               for label, c in enumerate(classes)
               for p in sorted((root / c).iterdir()) if p.suffix.lower() in extensions]
    return Annotations(records, classes, 0, str(root))
