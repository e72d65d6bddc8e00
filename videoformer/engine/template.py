"""``videoformer init-config``: a commented YAML config holding every key with its default.

The comments are read from ``engine/config.py`` itself (the comment lines above a field and the one after it),
so the template never drifts from the dataclasses: a new field appears with its comment, its choices and its
range.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .. import settings as settings_module
from . import config as config_module
from .config import Config, ConfigError, load_config, validate

SECTION_TITLES = {
    "model": "the network: a registered name (`videoformer list`), its clip size, pretrained weights",
    "data": "where the videos are, how clips are sampled and augmented",
    "train": "optimiser, schedule, precision, checkpoints",
    "eval": "multi-view testing (validation during training and `videoformer eval`)",
}


def field_comments() -> dict[tuple[str, str], str]:
    """``(class name, field name) -> comment`` of every annotated field in ``engine/config.py`` and
    ``videoformer/settings.py`` (``Augment``, which ``DataConfig`` inherits)."""
    out: dict[tuple[str, str], str] = {}
    for module in (settings_module, config_module):
        out.update(_module_comments(Path(module.__file__).read_text(encoding="utf-8")))
    return out


def _module_comments(source: str) -> dict[tuple[str, str], str]:
    """The field comments of one module's source (see :func:`field_comments`)."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, line = [], stmt.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            trailing = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
            text = " ".join(above + trailing)
            if text:
                out[(node.name, stmt.target.id)] = text
    return out


def _choices(tp: Any) -> str:
    """``one of a, b`` for a Literal, the range for an ``Annotated[..., Range]`` field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        rules = [r.describe() for r in tp.__metadata__ if hasattr(r, "describe")]
        inner = _choices(args[0])
        return "; ".join([s for s in (inner, *rules) if s])
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        parts = [_choices(a) for a in args if a is not type(None)]
        return "; ".join(p for p in parts if p)
    return ""


def _dump_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith("...") else text


def render(cfg: Config, header: str) -> str:
    """The YAML text of ``cfg``: every section and key, each key preceded by its comment and allowed values."""
    notes = field_comments()
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            comment = notes.get(("Config", section.name), "runs/<name>: config.yaml, checkpoints/, metrics.jsonl")
            out += ["", f"# {comment}", f"{section.name}: {_dump_value(value)}"]
            continue
        out += ["", f"# --- {section.name}: {SECTION_TITLES.get(section.name, '')}", f"{section.name}:"]
        hints = typing.get_type_hints(type(value), include_extras=True)
        for f in dataclasses.fields(value):
            comment = next((notes[(c.__name__, f.name)] for c in type(value).__mro__ if (c.__name__, f.name) in notes), "")
            allowed = _choices(hints[f.name])
            text = "; ".join(s for s in (comment, allowed and f"({allowed})") if s)
            out += [f"  # {line}" for line in textwrap.wrap(text, 108)]
            out.append(f"  {f.name}: {_dump_value(getattr(value, f.name))}")
    return "\n".join(out) + "\n"


def detect_data(root: Path) -> list[str]:
    """Overrides that point a config at ``root``: a folder layout ``root/{train,val}/<class>/<video>``."""
    from ..data.annotations import VIDEO_EXTENSIONS

    if not root.is_dir():
        raise ConfigError(f"--data: {root} is not a folder")
    splits = {p.name for p in root.iterdir() if p.is_dir()}
    if not {"train", "val"} <= splits:
        has_videos = any(p.suffix.lower() in VIDEO_EXTENSIONS for p in root.glob("*/*"))
        layout = "root/train/<class>/<video> and root/val/<class>/<video>"
        if has_videos:
            raise ConfigError(f"--data: {root} holds class folders but no train/ and val/ split; move some videos "
                              f"of every class into {layout} (a validation split picks the best checkpoint)")
        raise ConfigError(f"--data: {root} has no train/ and val/ folders; expected {layout} "
                          "(other layouts: data.format=kinetics, ucf101, hmdb51, ssv2, epic, csv in the written file)")
    return [f"data.root={root.resolve()}", "data.format=folder", "data.train=train", "data.val=val"]


def init_config(model: str, data: str | None = None, out: str | None = None) -> tuple[str, Config]:
    """The commented YAML of a run of ``model`` (a registered name, or a YAML recipe such as
    ``configs/small/temporal.yaml``) on the folder ``data``; returns the text and the config it describes."""
    from ..models.registry import get_spec

    recipe = Path(model) if model.endswith((".yaml", ".yml")) else None
    overrides = [] if recipe else [f"model.name={model}"]
    if data is not None:
        overrides += detect_data(Path(data))
    cfg = load_config(recipe, overrides) if recipe else load_config(None, overrides)
    spec = get_spec(cfg.model.name)  # unknown names list close matches
    if spec.config_cls.__name__ == "MMViTConfig":
        cfg.data.input = "compressed"
    if data is not None:  # runs/<recipe or model>_<data folder>
        cfg.output_dir = f"runs/{(recipe.stem if recipe else cfg.model.name)}_{Path(data).resolve().name}"
    validate(cfg)
    command = "videoformer init-config " + model + (f" --data {data}" if data else "") + (f" --out {out}" if out
                                                                                            else "")
    header = (f"videoformer run configuration, written by `{command}`.\n"
              "Every key is listed with its default; delete what you do not change, or change it here or on the\n"
              "command line (`videoformer train FILE train.lr=0.001`). Train with `videoformer train FILE`.")
    if cfg.data.input == "compressed":
        header += ("\nMM-ViT reads an MPEG-4 cache of the dataset: run `videoformer extract DATA OUT` and set\n"
                   "data.root to OUT/<name of DATA>.")
    return render(cfg, header), cfg
