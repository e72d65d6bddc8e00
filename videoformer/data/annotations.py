"""Annotation readers for the published formats -> a list of :class:`VideoRecord`.

Kinetics-400/600 CSV, UCF-101 (classInd + train/testlist 1-3), HMDB-51 split files,
Something-Something v2 JSON, Epic-Kitchens-100 CSV (verb / noun), a generic CSV
``path,label[,start,end]`` and a folder layout ``root/<class>/<video>``. Labels are 0-based ints;
``classes`` lists the names in label order.

Rules shared by every reader:

- Files are UTF-8; a byte-order mark is stripped. Anything else is an :class:`AnnotationError` naming the
  file and the line, as is every malformed row.
- Class lists are deterministic: where a format has no index file they are sorted, numerically when every
  name is an integer (``0, 1, 2, ..., 10``), else by text (:func:`class_order`). Pass the training classes
  when reading validation / test so both splits share one list; a label outside a given list is an error
  naming the file, the line and the close matches, never a new class.
- A row repeated verbatim (same video, segment and label) is dropped and counted (``duplicates``, one
  warning); the same video and segment with two different labels is an error naming both lines.
- A listed video is looked up as written; when it is absent, the same name with another video extension is
  used (``x.avi`` listed, ``x.mp4`` on disk: the cache of ``videoformer extract``). Two candidates for one
  row (``x.mp4`` and ``x.mkv``; ``root/x.mp4`` and ``root/<label>/x.mp4``) are an error, not a guess.
- Records whose video is missing are dropped and counted (``missing``) unless ``check_exists=False``.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from videoformer.data.errors import AnnotationError

log = logging.getLogger(__name__)

__all__ = [
    "VideoRecord", "Annotations", "read_kinetics", "read_ucf101", "read_hmdb51", "read_ssv2",
    "read_epic_kitchens", "read_csv", "read_folder", "read_text", "class_order", "VIDEO_EXTENSIONS",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")
_INT = re.compile(r"-?\d+")
_WS = re.compile(r"\s*")


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
    duplicates: int = 0  # rows dropped because they repeat an earlier row verbatim

    def __len__(self) -> int:
        return len(self.records)


def read_text(path: str | os.PathLike) -> str:
    """Text of an annotation file: UTF-8 with an optional byte-order mark (stripped). A missing file or
    bytes that are not UTF-8 raise :class:`AnnotationError` naming the file (and the line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(path, "annotation file not found") from None
    except IsADirectoryError:
        raise AnnotationError(path, "is a folder, expected an annotation file") from None
    except OSError as e:
        raise AnnotationError(path, f"cannot read: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AnnotationError(path, f"line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                    "save the file as UTF-8") from None


def class_order(names: Iterable[str]) -> list[str]:
    """Sorted distinct class names: numerically when every name is an integer ("2" before "10"), else by text
    (the order of the Kinetics class index)."""
    names = set(names)
    if names and all(_INT.fullmatch(n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _unknown_label(source: str | os.PathLike, where: str, label: str, names: Sequence[str]) -> AnnotationError:
    close = difflib.get_close_matches(label, list(names), n=3, cutoff=0.6)
    hint = f"; close matches: {', '.join(map(repr, close))}" if close else ""
    return AnnotationError(source, f"{where}: label {label!r} is not one of the {len(names)} classes{hint}")


def _label_name(label, classes) -> str:
    if isinstance(label, tuple) or not isinstance(classes, list) or not 0 <= label < len(classes):
        return repr(label)
    return repr(classes[label])


class _VideoFinder:
    """Finds listed videos through one directory listing per folder (no per-row stat calls)."""

    def __init__(self) -> None:
        self._listings: dict[str, tuple[set[str], dict[str, list[str]]]] = {}

    def _listing(self, folder: Path) -> tuple[set[str], dict[str, list[str]]]:
        key = os.fspath(folder)
        if key not in self._listings:
            names: set[str] = set()
            by_stem: dict[str, list[str]] = {}
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        if e.is_file():
                            names.add(e.name)
                            stem, ext = os.path.splitext(e.name)
                            if ext.lower() in VIDEO_EXTENSIONS:
                                by_stem.setdefault(stem, []).append(e.name)
            except OSError:  # a missing folder: nothing found
                pass
            self._listings[key] = (names, by_stem)
        return self._listings[key]

    def candidates(self, path: Path) -> list[Path]:
        """``[path]`` when it exists, else the files named like it with a video extension."""
        names, by_stem = self._listing(path.parent)
        if path.name in names:
            return [path]
        stem, ext = os.path.splitext(path.name)
        stem = stem if ext.lower() in VIDEO_EXTENSIONS else path.name
        return [path.parent / n for n in sorted(by_stem.get(stem, []))]

    def find(self, groups: Sequence[Sequence[Path]], source: str | os.PathLike, where: str) -> str:
        """The one file of the first group with a candidate; the first path as written when none exists.
        Two candidates in a group are an :class:`AnnotationError`."""
        for group in groups:
            found = sorted({c for p in group for c in self.candidates(p)})
            if len(found) > 1:
                raise AnnotationError(source, f"{where}: ambiguous video, {len(found)} files match: "
                                              f"{', '.join(map(str, found))}; remove or rename all but one")
            if found:
                return os.fspath(found[0])
        return os.fspath(groups[0][0])


def _segment(r: VideoRecord) -> tuple:
    return (r.path, r.start, r.end, r.start_frame, r.stop_frame)


def _finish(entries: Sequence[tuple[VideoRecord, str]], source: str | os.PathLike, classes,
            check_exists: bool, key: Callable[[VideoRecord], Any] = _segment) -> Annotations:
    """Drop verbatim duplicates (counted), refuse conflicting ones, drop and count missing videos."""
    seen: dict[Any, tuple[VideoRecord, str]] = {}
    records, dropped, example = [], 0, ""
    for rec, where in entries:
        k = key(rec)
        if k in seen:
            prev, prev_where = seen[k]
            if prev.label != rec.label:
                raise AnnotationError(source, f"{where}: {rec.path} is labelled {_label_name(rec.label, classes)} "
                                              f"here but {_label_name(prev.label, classes)} on {prev_where}")
            dropped += 1
            example = example or f"{where} repeats {prev_where}"
            continue
        seen[k] = (rec, where)
        records.append(rec)
    if dropped:
        log.warning("%s: %d duplicate rows dropped (e.g. %s)", source, dropped, example)
    kept = [r for r in records if os.path.isfile(r.path)] if check_exists else records
    missing = len(records) - len(kept)
    if missing:
        log.warning("%s: %d of %d videos not found; skipped", source, missing, len(records))
    return Annotations(kept, classes, missing, os.fspath(source), duplicates=dropped)


def _dict_rows(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line, row)]) of a CSV file with a header line."""
    reader = csv.DictReader(io.StringIO(read_text(path)))
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise AnnotationError(path, "empty CSV (no header)")
    reader.fieldnames = header
    try:
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in r.items() if k is not None}) for r in reader]
    except csv.Error as e:
        raise AnnotationError(path, f"line {reader.line_num}: {e}") from None
    return header, rows


def read_kinetics(csv_path: str | os.PathLike, root: str | os.PathLike, classes: list[str] | None = None,
                  check_exists: bool = True) -> Annotations:
    """Kinetics-400/600/700 CSV: ``label,youtube_id,time_start,time_end,split[,is_cc]``.

    Videos are ``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`` (the official downloader's
    naming) in ``root`` or ``root/<label>/``; a plain ``{youtube_id}.<ext>`` is accepted too. Test CSVs
    without a label column give label -1. ``classes`` defaults to the sorted labels of this file
    (pass the training classes when reading validation / test).
    """
    header, rows = _dict_rows(csv_path)
    need = {"youtube_id", "time_start", "time_end"}
    if not need <= set(header):
        raise AnnotationError(csv_path, f"line 1: Kinetics CSV needs columns {sorted(need)}, got {header}")
    names = list(classes) if classes is not None else class_order(r["label"] for _, r in rows if r.get("label"))
    index = {n: i for i, n in enumerate(names)}
    root, finder = Path(root), _VideoFinder()
    entries = []
    for line, r in rows:
        where = f"line {line}"
        try:
            t0, t1 = int(float(r["time_start"])), int(float(r["time_end"]))
        except ValueError as e:
            raise AnnotationError(csv_path, f"{where}: bad time_start/time_end: {e}") from None
        label = r.get("label")
        if label and label not in index:
            raise _unknown_label(csv_path, where, label, names)
        stem = f"{r['youtube_id']}_{t0:06d}_{t1:06d}"
        folders = [root, root / label] if label else [root]
        path = finder.find([[d / stem for d in folders], [d / r["youtube_id"] for d in folders]], csv_path, where)
        entries.append((VideoRecord(path, index[label] if label else -1, id=stem), where))
    return _finish(entries, csv_path, names, check_exists)


def _read_class_ind(path: Path) -> list[str]:
    names: dict[int, str] = {}
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(path, f"line {line_no}: expected '<index> <ClassName>', got {line!r}")
        if int(parts[0]) in names:
            raise AnnotationError(path, f"line {line_no}: index {parts[0]} given twice")
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
    finder, entries = _VideoFinder(), []
    for line_no, line in enumerate(read_text(list_path).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where, rel = f"line {line_no}", parts[0]
        folder = rel.split("/")[0]
        if folder not in index:
            raise _unknown_label(list_path, where, folder, classes)
        if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) - 1 != index[folder]):
            raise AnnotationError(list_path, f"{where}: label {parts[1]} disagrees with {folder} "
                                             f"({index[folder] + 1} in classInd.txt)")
        path = finder.find([[root / rel]], list_path, where)
        entries.append((VideoRecord(path, index[folder], id=Path(rel).stem), where))
    return _finish(entries, list_path, classes, check_exists)


def read_hmdb51(split_dir: str | os.PathLike, root: str | os.PathLike, split: int = 1, train: bool = True,
                check_exists: bool = True) -> Annotations:
    """HMDB-51: ``<class>_test_split<N>.txt`` files with lines "<video>.avi <id>", id 1 = train,
    2 = test, 0 = unused; videos in ``root/<class>/<video>``. Classes are sorted by name."""
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB-51 has splits 1-3, got {split}")
    split_dir, root = Path(split_dir), Path(root)
    pat = re.compile(rf"^(.*)_test_split{split}\.txt$")
    files = {pat.match(f.name).group(1): f for f in split_dir.glob(f"*_test_split{split}.txt")}
    if not files:
        raise AnnotationError(split_dir, f"no *_test_split{split}.txt files")
    classes = class_order(files)
    want = "1" if train else "2"
    finder, entries = _VideoFinder(), []
    for label, name in enumerate(classes):
        f = files[name]
        for line_no, line in enumerate(read_text(f).splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(f, f"line {line_no}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == want:
                where = f"{f.name} line {line_no}"
                path = finder.find([[root / name / parts[0]]], f, f"line {line_no}")
                entries.append((VideoRecord(path, label, id=Path(parts[0]).stem), where))
    return _finish(entries, split_dir, classes, check_exists)


def _json(path: str | os.PathLike):
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"line {e.lineno}: bad JSON: {e.msg}") from None


def _json_items(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line, item)`` of every element of a JSON list file: one parse that keeps line numbers."""
    text, dec = read_text(path), json.JSONDecoder()
    try:
        pos = _WS.match(text).end()
        if not text.startswith("[", pos):
            json.loads(text)  # a syntax error (with its line), else a valid non-list
            raise AnnotationError(path, "expected a JSON list of items")
        items: list[tuple[int, Any]] = []
        pos, line, counted = pos + 1, 1, 0
        while True:
            pos = _WS.match(text, pos).end()
            if text.startswith("]", pos):
                break
            if items:
                if not text.startswith(",", pos):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
                pos = _WS.match(text, pos + 1).end()
            line, counted = line + text.count("\n", counted, pos), pos
            item, pos = dec.raw_decode(text, pos)
            items.append((line, item))
        if text[pos + 1:].strip():
            raise json.JSONDecodeError("Extra data", text, pos + 1)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"line {e.lineno}: bad JSON: {e.msg}") from None
    return items


def read_ssv2(labels_json: str | os.PathLike, split_json: str | os.PathLike, root: str | os.PathLike,
              ext: str = ".webm", check_exists: bool = True) -> Annotations:
    """Something-Something v2: ``labels.json`` {template: "index"} and ``train.json`` /
    ``validation.json`` lists of {"id", "label", "template", "placeholders"}; the class is the template
    with its brackets removed. Videos are ``root/<id>.webm``. Test JSON (ids only) gives label -1."""
    labels = _json(labels_json)
    if not isinstance(labels, dict):
        raise AnnotationError(labels_json, "expected an object {template: index}")
    try:
        index = {k: int(v) for k, v in labels.items()}
    except (TypeError, ValueError) as e:
        raise AnnotationError(labels_json, f"class indices must be integers: {e}") from None
    classes = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])]
    root, finder, entries = Path(root), _VideoFinder(), []
    for line, it in _json_items(split_json):
        where = f"line {line}"
        if not isinstance(it, dict) or "id" not in it:
            raise AnnotationError(split_json, f"{where}: item without an 'id'")
        label = -1
        if "template" in it:
            name = str(it["template"]).replace("[", "").replace("]", "")
            if name not in index:
                raise _unknown_label(split_json, where, name, classes)
            label = index[name]
        path = finder.find([[root / f"{it['id']}{ext}"]], split_json, where)
        entries.append((VideoRecord(path, label, id=str(it["id"])), where))
    return _finish(entries, split_json, classes, check_exists, key=lambda r: r.id)


def read_epic_kitchens(csv_path: str | os.PathLike, root: str | os.PathLike, check_exists: bool = True) -> Annotations:
    """Epic-Kitchens-100 CSV (``EPIC_100_train.csv`` ...): label = (verb_class, noun_class), frame range
    [start_frame, stop_frame] (1-based, inclusive, as published; stored 0-based half-open). Videos are
    ``root/<participant_id>/videos/<video_id>.MP4`` or ``root/<video_id>.<ext>``. Rows are keyed by
    ``narration_id`` (when present) for duplicate detection: distinct narrations may share a segment."""
    header, rows = _dict_rows(csv_path)
    need = {"video_id", "start_frame", "stop_frame"}
    if not need <= set(header):
        raise AnnotationError(csv_path, f"line 1: Epic-Kitchens CSV needs columns {sorted(need)}, got {header}")
    root, finder = Path(root), _VideoFinder()
    verbs: dict[int, str] = {}
    nouns: dict[int, str] = {}
    entries = []
    for line, r in rows:
        where = f"line {line}"
        try:
            s, e = int(r["start_frame"]), int(r["stop_frame"])
            label = (int(r["verb_class"]), int(r["noun_class"])) if r.get("verb_class") else (-1, -1)
        except (ValueError, KeyError) as err:
            raise AnnotationError(csv_path, f"{where}: {err!r}") from None
        if e < s:
            raise AnnotationError(csv_path, f"{where}: stop_frame {e} < start_frame {s}")
        if r.get("verb_class"):
            verbs[label[0]], nouns[label[1]] = r.get("verb", ""), r.get("noun", "")
        vid, pid = r["video_id"], r.get("participant_id") or r["video_id"].split("_")[0]
        path = finder.find([[root / pid / "videos" / vid, root / pid / vid, root / vid]], csv_path, where)
        entries.append((VideoRecord(path, label, start_frame=s - 1, stop_frame=e,
                                    id=r.get("narration_id") or f"{vid}_{line}"), where))
    classes = {"verb": [verbs.get(i, "") for i in range(max(verbs, default=-1) + 1)],
               "noun": [nouns.get(i, "") for i in range(max(nouns, default=-1) + 1)]}
    keyed = "narration_id" in header
    return _finish(entries, csv_path, classes, check_exists, key=(lambda r: r.id) if keyed else _segment)


def read_csv(csv_path: str | os.PathLike, root: str | os.PathLike | None = None, classes: list[str] | None = None,
             check_exists: bool = True) -> Annotations:
    """Generic ``path,label[,start,end]`` CSV (that header line optional; start / end in seconds).

    Relative paths are relative to the CSV's own folder (``root`` overrides that base). A label is a class
    name or an integer class index: with ``classes`` given, a name must be one of them and an index inside
    the list; without, integer labels are indices (classes ``"0" .. "max"``) and names give the sorted
    class list (:func:`class_order`). ``-1`` marks an unlabelled row.
    """
    csv_path = Path(csv_path)
    reader = csv.reader(io.StringIO(read_text(csv_path)))
    rows: list[tuple[int, list[str]]] = []
    try:
        for r in reader:
            if r and any(c.strip() for c in r):
                rows.append((reader.line_num, [c.strip() for c in r]))
    except csv.Error as e:
        raise AnnotationError(csv_path, f"line {reader.line_num}: {e}") from None
    if rows and rows[0][1][0].lower() == "path":
        header = [c.lower() for c in rows[0][1]]
        if header not in (["path", "label"], ["path", "label", "start", "end"]):
            hint = (" (the manifest.csv of videoformer extract lists cached files, not labels: read the cache with "
                    "the dataset's own annotations and data.root at the cache)" if "source" in header else "")
            raise AnnotationError(csv_path, f"line {rows[0][0]}: expected the header path,label[,start,end], got "
                                            f"{','.join(rows[0][1])}{hint}")
        rows = rows[1:]
    for line, r in rows:
        if len(r) not in (2, 4):
            raise AnnotationError(csv_path, f"line {line}: expected path,label[,start,end], got {r}")
    labels = [r[1] for _, r in rows]
    numeric = all(_INT.fullmatch(lab) for lab in labels)
    names = list(classes) if classes is not None else (None if numeric else class_order(labels))
    index = {n: i for i, n in enumerate(names or [])}
    base = Path(root) if root is not None else csv_path.parent
    finder, entries = _VideoFinder(), []
    for line, r in rows:
        where, lab = f"line {line}", r[1]
        if lab in index:
            label = index[lab]
        elif _INT.fullmatch(lab) and names is None:
            label = int(lab)
            if label < -1:
                raise AnnotationError(csv_path, f"{where}: label {lab} is not a class index (-1: unlabelled)")
        elif _INT.fullmatch(lab) and -1 <= int(lab) < len(names):
            label = int(lab)
        else:
            raise _unknown_label(csv_path, where, lab, names or [])
        try:
            start, end = (float(r[2]), float(r[3])) if len(r) == 4 else (None, None)
        except ValueError as e:
            raise AnnotationError(csv_path, f"{where}: bad start/end: {e}") from None
        p = Path(r[0])
        path = finder.find([[p if p.is_absolute() else base / p]], csv_path, where)
        entries.append((VideoRecord(path, label, start, end, id=p.stem), where))
    if names is None:
        names = [str(i) for i in range(max((rec.label for rec, _ in entries), default=-1) + 1)]
    return _finish(entries, csv_path, names, check_exists)


def read_folder(root: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> Annotations:
    """``root/<class>/<video>``: classes are the sub-folder names in :func:`class_order`."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(root, "dataset folder not found")
    classes = class_order(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    records = [VideoRecord(str(p), label, id=p.stem)
               for label, c in enumerate(classes)
               for p in sorted((root / c).iterdir()) if p.suffix.lower() in extensions and p.is_file()]
    return Annotations(records, classes, 0, str(root))
