"""``videoformer export``: a trained or pretrained model as ONNX or a ``torch.export`` program, with the input
convention written beside it.

``export_model(source, out, format)`` loads ``source`` as ``eval`` / ``predict`` do (:func:`~.predict.load_run`:
a run directory, a training checkpoint, or anything :func:`~videoformer.weights.load_pretrained` reads) and writes

- ``OUT/model.onnx`` (TorchScript-based ONNX exporter, opset 17; checked with onnxruntime when installed) or
  ``OUT/model.pt2`` (``torch.export.save``; read back with ``torch.export.load(path).module()``);
- ``OUT/preprocessing.json``: the model's inputs (names, shapes, layout), its outputs (``logits``: the heads'
  logits side by side; ``embedding``: the pre-logits clip representation), the class names per head and the
  :class:`~videoformer.data.preprocessing.Preprocessing` of the weights (mean, std, crop, short side, frames,
  stride, sampler), so another program reproduces the tensor ``predict`` feeds the model.

Inputs are the normalised tensors the eager model takes: one ``video`` ``(B, 3, T, H, W)``; MM-ViT's mapping
becomes one named input per modality (``iframe (B, T, 3, H, W)``, ``mv``, ``residual``, ``audio (B, T, F)``).
``dynamic_batch`` leaves B free (the program is traced at B = 2); otherwise B = 1.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..fileio import atomic_write, atomic_write_text
from .predict import LoadedRun, load_run

FORMATS = ("onnx", "exported-program")
MODEL_FILES = {"onnx": "model.onnx", "exported-program": "model.pt2"}
PREPROCESSING_FILE = "preprocessing.json"
OPSET = 17


class ExportError(ValueError):
    """The model could not be exported (a missing optional dependency, an unsupported operation); names the model."""


class ExportModule(nn.Module):
    """The exported graph: positional input tensors (one per name in :attr:`input_names`, in the order of the
    model's ``input_spec.modalities``) -> ``(logits, embedding)``; ``input_spec.select`` turns them into the
    model's argument (MM-ViT's modality mapping), so the graph has flat inputs."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.input_names, self.spec = model, tuple(input_names), model.input_spec

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.spec.select(dict(zip(self.spec.modalities, inputs)))
        embedding = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.head(embedding), embedding


def input_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of one clip (no batch axis) of each input of ``model``'s exported graph: ``video`` for an
    RGB model, one input per modality of ``model.input_spec`` for MM-ViT."""
    spec = model.input_spec
    if spec.compressed:
        return dict(model.input_shapes())
    return {"video": (3, spec.num_frames, spec.img_size, spec.img_size)}


def example_inputs(model: nn.Module, batch: int = 1, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, ...]:
    """Random normal inputs of the exported graph, in :func:`input_shapes` order."""
    return tuple(torch.randn(batch, *shape, generator=generator) for shape in input_shapes(model).values())


@dataclass
class ExportResult:
    model_file: Path
    preprocessing_file: Path
    max_abs_diff: float | None  # onnxruntime vs eager on a random input; None when not checked


def describe(run: LoadedRun, fmt: str, dynamic_batch: bool) -> dict[str, Any]:
    """The ``preprocessing.json`` document of ``run``'s exported model."""
    model = run.model
    batch: int | str = "batch" if dynamic_batch else 1
    layouts = {"video": "B C T H W", "audio": "B T F"}
    inputs = [{"name": name, "shape": [batch, *shape], "dtype": "float32", "layout": layouts.get(name, "B T C H W")}
              for name, shape in input_shapes(model).items()]
    pre = model.preprocessing
    compressed = model.input_spec.compressed
    doc: dict[str, Any] = {
        "videoformer_export": 1,
        "format": fmt,
        "file": MODEL_FILES[fmt],
        "model": model.registry_name,
        "source": run.source,
        "input": "compressed" if compressed else "rgb",
        "inputs": inputs,
        "outputs": [{"name": "logits", "shape": [batch, sum(run.heads)]},
                    {"name": "embedding", "shape": [batch, model.num_features]}],
        "heads": dict(zip(run.head_names, run.heads)),
        "classes": dict(zip(run.head_names, run.class_lists)),
        "preprocessing": pre.to_dict(),
        # the short names, for programs that only need these
        "mean": list(pre.mean), "std": list(pre.std), "size": pre.img_size, "short_side": pre.short_side,
        "frames": pre.num_frames, "stride": pre.stride, "sampler": pre.sampler,
    }
    if not compressed:
        doc["pipeline"] = ("frames: the sampler's indices (dense: `frames` frames `stride` apart, centred in the "
                           "clip or window; uniform: the centres of `frames` equal segments); RGB uint8 -> short "
                           "side scaled to `short_side` (bilinear, antialiased) -> centre crop `size` -> /255 -> "
                           "(x - mean) / std -> (B, 3, T, H, W); softmax of `logits` per head gives the scores")
    else:
        doc["pipeline"] = ("compressed domain (MPEG-4 re-encode, `videoformer extract`): TSN segment centres; "
                           "I-frames (x/255 - ImageNet mean) / std, motion vectors clipped to +-20 px / 40, "
                           "residuals clipped to [-128, 127] / 255 / ImageNet std, audio VGGish embeddings")
    return doc


def _dynamic(names: Sequence[str]) -> dict[str, dict[int, str]]:
    return {n: {0: "batch"} for n in (*names, "logits", "embedding")}


def _export_onnx(module: ExportModule, args: tuple[torch.Tensor, ...], dynamic_batch: bool) -> bytes:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise ExportError("ONNX export needs the optional `export` dependencies: pip install 'videoformer[export]' "
                          "(onnx, onnxruntime)") from None
    buf = io.BytesIO()
    with warnings.catch_warnings():  # tracer notes on shape checks (constant for the traced shapes) and the
        warnings.simplefilter("ignore")  # deprecation of this exporter, whose successor needs onnxscript
        torch.onnx.export(module, args, buf, input_names=list(module.input_names),
                          output_names=["logits", "embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes=_dynamic(module.input_names) if dynamic_batch else None)
    return buf.getvalue()


def _export_program(module: ExportModule, args: tuple[torch.Tensor, ...], dynamic_batch: bool) -> bytes:
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        shapes = (tuple({0: batch} for _ in args),)  # forward(*inputs): one entry, the tuple of inputs
    program = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def onnx_outputs(path: str | os.PathLike, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run an exported ONNX model with onnxruntime (CPU) on ``inputs`` (in the graph's input order)."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(y) for y in session.run(None, feed)]


def export_model(source: str | os.PathLike, out: str | os.PathLike, fmt: Literal["onnx", "exported-program"] = "onnx",
                 dynamic_batch: bool = False, check: bool = True, run: LoadedRun | None = None) -> ExportResult:
    """Export the model of ``source`` (see the module docstring) into the folder ``out``. With ``check`` and
    onnxruntime installed, the ONNX model is run on a random input and compared with the eager model."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: choose from {', '.join(FORMATS)}, got {fmt!r}")
    run = run or load_run(source)
    model = run.model.to("cpu").eval()
    names = list(input_shapes(model))
    module = ExportModule(model, names).eval()
    args = example_inputs(model, 2 if dynamic_batch else 1, torch.Generator().manual_seed(0))
    out = Path(out)
    target = out / MODEL_FILES[fmt]
    try:
        with torch.no_grad():
            data = (_export_onnx if fmt == "onnx" else _export_program)(module, args, dynamic_batch)
    except ExportError:
        raise
    except Exception as err:  # exporter failures come as many types; name the model and the format
        raise ExportError(f"{run.source} ({model.registry_name}): {fmt} export failed: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    atomic_write(target, lambda f: f.write(data))
    doc = describe(run, fmt, dynamic_batch)
    pre_file = out / PREPROCESSING_FILE
    atomic_write_text(pre_file, json.dumps(doc, indent=2) + "\n")
    diff = None
    if check and fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        else:
            with torch.no_grad():
                want = module(*args)
            got = onnx_outputs(target, args)
            diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    return ExportResult(target, pre_file, diff)
