"""What a model's work costs: multiply-accumulates counted from its ONNX graphs.

A job's cost must follow the model (a 70B decoder does about a thousand times the work
per token of a 70M one) and be checkable by anyone who has the model's files. The
measure is the number of multiply-accumulates (MACs) of its MatMul, Gemm, Conv and
ConvTranspose nodes: almost all of a transformer's or a UNet's arithmetic, and a pure
function of the graph and its weights' shapes, computed with ``onnx``'s static shape
inference for the input shapes a job implies. Nothing is timed, so every honest node
gets the same integers.

A :class:`ModelCost` is a polynomial in the counts a receipt carries:

- LLM: a token costs ``token_macs`` plus ``pair_macs`` per position it attends to
  (attention as a function of position); a job of ``n`` prompt and ``m`` output tokens
  runs ``L = n + m`` positions and costs ``L*token_macs + pair_macs*L*(L+1)/2``.
- Diffusion: one UNet pass over ``p`` latent pixels costs
  ``step_fixed + step_pixel*p + step_pixel2*p^2`` (the square term is self-attention
  over pixels); a guided step runs two passes. The text encoder runs once per pass
  (``text_macs``) and the VAE decodes once (``decode_fixed + decode_pixel*p +
  decode_pixel2*p^2``).

Both are in MACs, so LLM and diffusion work sit on one scale; :data:`WORK_UNIT_MACS`
MACs make one work unit. The coefficients are fitted from the counts at a few sizes and
the fit is checked at one more, so a graph whose cost is not of this form is refused
rather than mispriced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Annotated

from aipg.wire import U8, U32, Hash32, Range, Record, record

from .errors import ModelError
from .manifest import DIFFUSION, LLM, MAX_DIFFUSION_STEPS, ModelDir

__all__ = [
    "COST_KIND_DIFFUSION",
    "COST_KIND_LLM",
    "WORK_UNIT_MACS",
    "CostError",
    "ModelCost",
    "count_macs",
    "diffusion_job_macs",
    "llm_job_macs",
    "measure_cost",
    "work_units_of",
]

WORK_UNIT_MACS = 1_000  # one work unit is a thousand multiply-accumulates
COST_KIND_LLM = 1
COST_KIND_DIFFUSION = 2
MACS = Annotated[int, Range(0, 2**62)]
_COUNTED = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_CONTROL_FLOW = ("If", "Loop", "Scan")


class CostError(ModelError):
    """A graph whose MACs cannot be counted statically, or a cost that does not fit."""


@record(tag=217)
class ModelCost(Record):
    """A model's registered cost (in MACs) and the bounds of one job on it.

    LLM: ``token_macs``, ``pair_macs``; ``max_prompt_tokens`` and ``max_total_tokens``
    (prompt + output) from the context length. Diffusion: the ``step_*`` terms (one
    UNet pass), ``text_macs``, the ``decode_*`` terms; ``max_steps`` and
    ``max_latent_pixels``. The fields of the other kind are 0.
    """

    model_id: Hash32
    kind: Annotated[int, Range(1, 2)]
    token_macs: MACS = 0
    pair_macs: MACS = 0
    step_fixed: MACS = 0
    step_pixel: MACS = 0
    step_pixel2: MACS = 0
    text_macs: MACS = 0
    decode_fixed: MACS = 0
    decode_pixel: MACS = 0
    decode_pixel2: MACS = 0
    max_prompt_tokens: U32 = 0
    max_total_tokens: U32 = 0
    max_steps: U32 = 0
    max_latent_pixels: U32 = 0
    vae_scale_factor: U8 = 0  # image side / latent side
    version: U8 = 1


def llm_job_macs(cost: ModelCost, prompt_tokens: int, output_tokens: int) -> int:
    """MACs of an LLM job that read ``prompt_tokens`` and generated ``output_tokens``."""
    n = prompt_tokens + output_tokens
    return n * cost.token_macs + cost.pair_macs * n * (n + 1) // 2


def diffusion_job_macs(cost: ModelCost, steps: int, latent_pixels: int, guided: bool) -> int:
    """MACs of a diffusion job of ``steps`` over ``latent_pixels`` (two passes a step and
    two text encodings when ``guided``)."""
    p = latent_pixels
    passes = 2 if guided else 1
    unet = cost.step_fixed + cost.step_pixel * p + cost.step_pixel2 * p * p
    decode = cost.decode_fixed + cost.decode_pixel * p + cost.decode_pixel2 * p * p
    return steps * passes * unet + passes * cost.text_macs + decode


def work_units_of(macs: int) -> int:
    """Work units of ``macs`` multiply-accumulates (rounded down)."""
    return macs // WORK_UNIT_MACS


# --- counting ----------------------------------------------------------------------------


def count_macs(model_bytes: bytes, dims: Callable[[str], int] | Mapping[str, int]) -> int:
    """MACs of one run of the ONNX graph ``model_bytes`` with every symbolic input
    dimension bound by ``dims`` (a mapping, or a function of the dimension's name).

    Raises CostError when a counted node's shapes cannot be inferred, or the graph has
    control flow (its cost would depend on data).
    """
    import onnx

    bind = dims.__getitem__ if isinstance(dims, Mapping) else dims
    try:
        model = onnx.ModelProto.FromString(model_bytes)
    except Exception as e:  # a parse error of any kind: the bytes are not a model
        raise CostError(f"not an ONNX model: {e}") from None
    for node in model.graph.node:
        if node.op_type in _CONTROL_FLOW:
            raise CostError(f"node {node.name!r} is {node.op_type}: its cost depends on data")
    initializer_names = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in initializer_names:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                try:
                    value = int(bind(d.dim_param))
                except KeyError:
                    raise CostError(
                        f"input {vi.name}: no size for dimension {d.dim_param!r}"
                    ) from None
                d.ClearField("dim_param")
                d.dim_value = value
    shapes = _infer(model)
    total = 0
    for node in model.graph.node:
        if node.op_type in _COUNTED:
            total += _node_macs(node, shapes)
    return total


# Ops whose output has the broadcast shape of their inputs (or the shape of their one input).
_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "And", "Or", "Xor", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "Max", "Min", "Sum", "Mean",
    "Cast", "Softmax", "LogSoftmax", "Relu", "Sigmoid", "Tanh", "Neg", "Not", "Sqrt",
    "Exp", "Log", "Erf", "Identity", "Abs", "Reciprocal", "Gelu", "Clip",
}  # fmt: skip


def _infer(model) -> dict[str, tuple[int, ...] | None]:
    """Static shapes of every value, by onnx's shape inference (with data propagation).

    Where inference loses a shape at an elementwise op (an attention bias built with
    Range from a runtime Shape, say), the output is taken to have the broadcast shape of
    the inputs that are known, and inference runs again from there. That can only
    undercount (an unknown operand broadcasting to a larger shape would make the true
    output larger), so a model never costs more than its graph does.
    """
    import onnx

    for _ in range(16):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as e:
            raise CostError(f"shape inference failed: {e}") from None
        shapes: dict[str, tuple[int, ...] | None] = {}
        for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            shapes[vi.name] = _static(vi)
        for t in inferred.graph.initializer:
            shapes[t.name] = tuple(int(x) for x in t.dims)
        for node in inferred.graph.node:  # constants have the shape of their value
            if node.op_type == "Constant" and shapes.get(node.output[0]) is None:
                for a in node.attribute:
                    if a.name == "value":
                        shapes[node.output[0]] = tuple(int(x) for x in a.t.dims)
        hints = {}
        for node in inferred.graph.node:
            if node.op_type not in _ELEMENTWISE or shapes.get(node.output[0]) is not None:
                continue
            known = [shapes[n] for n in node.input if n and shapes.get(n) is not None]
            if not known:
                continue
            out = known[0]
            for k in known[1:]:
                out = _broadcast(out, k, node)
            hints[node.output[0]] = out
        if not hints:
            return shapes
        elem = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
        kept = [vi for vi in inferred.graph.value_info if vi.name not in hints]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        for name, shape in hints.items():
            model.graph.value_info.append(
                onnx.helper.make_tensor_value_info(name, elem.get(name, 1), list(shape))
            )
    raise CostError("shape inference did not settle")


def _static(vi) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        out.append(int(d.dim_value))
    return tuple(out)


def _shape(shapes, name: str, node) -> tuple[int, ...]:
    s = shapes.get(name)
    if s is None:
        raise CostError(f"{node.op_type} {node.name!r}: the shape of {name!r} is not static")
    return s


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _node_macs(node, shapes) -> int:
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "MatMul":
        a, b = (_shape(shapes, n, node) for n in node.input[:2])
        if len(a) == 1:
            a = (1, *a)
        if len(b) == 1:
            b = (*b, 1)
        batch = _broadcast(a[:-2], b[:-2], node)
        return _prod(batch) * a[-2] * a[-1] * b[-1]
    if node.op_type == "Gemm":
        a, b = (_shape(shapes, n, node) for n in node.input[:2])
        trans_a = attrs["transA"].i if "transA" in attrs else 0
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
        n = b[0] if trans_b else b[1]
        return m * k * n
    if node.op_type == "Conv":
        w = _shape(shapes, node.input[1], node)
        y = _shape(shapes, node.output[0], node)
        return _prod(y) * _prod(w[1:])  # each output: C_in/group x kernel MACs
    # ConvTranspose: each input element is spread over C_out/group x kernel outputs
    x = _shape(shapes, node.input[0], node)
    w = _shape(shapes, node.input[1], node)
    return _prod(x) * _prod(w[1:])


def _broadcast(a: tuple[int, ...], b: tuple[int, ...], node) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise CostError(f"MatMul {node.name!r}: batch dimensions {a} and {b} do not match")
        out.append(max(x, y))
    return tuple(out)


# --- fitting a model's cost ------------------------------------------------------------------


def _llm_dim(batch: int, seq: int, past: int) -> Callable[[str], int]:
    """Sizes for optimum's decoder dimension names (``batch_size``, ``sequence_length``,
    ``past_sequence_length``, ``total_sequence_length``, ``past_sequence_length + 1``)."""

    def dim(name: str) -> int:
        low = name.lower().replace(" ", "")
        if "batch" in low:
            return batch
        if "total" in low or "+" in low:
            return past + seq
        if "past" in low:
            return past
        if "seq" in low:
            return seq
        raise KeyError(name)

    return dim


def _image_dim(batch: int, side: int) -> Callable[[str], int]:
    def dim(name: str) -> int:
        low = name.lower()
        if "batch" in low:
            return batch
        if low in ("height", "width", "h", "w") or "latent" in low:
            return side
        raise KeyError(name)

    return dim


def _fit_quadratic(points: list[tuple[int, int]], what: str) -> tuple[int, int, int]:
    """(c0, c1, c2) with ``c0 + c1*x + c2*x^2`` through the first three ``(x, y)`` points,
    checked at the rest; all three non-negative integers. Raises CostError otherwise."""
    (x0, y0), (x1, y1), (x2, y2) = points[:3]
    d01 = Fraction(y1 - y0, x1 - x0)
    d12 = Fraction(y2 - y1, x2 - x1)
    c2 = (d12 - d01) / (x2 - x0)
    c1 = d01 - c2 * (x0 + x1)
    c0 = y0 - c1 * x0 - c2 * x0 * x0
    coeffs = (c0, c1, c2)
    if any(c.denominator != 1 or c < 0 for c in coeffs):
        raise CostError(f"{what}: MACs are not a polynomial of degree 2 with integer terms")
    for x, y in points[3:]:
        if c0 + c1 * x + c2 * x * x != y:
            raise CostError(f"{what}: MACs at size {x} are {y}, off the fitted polynomial")
    return int(c0), int(c1), int(c2)


def measure_cost(md: ModelDir) -> ModelCost:
    """The cost of the model in ``md``, counted from its verified ONNX files."""
    m = md.manifest
    if m.kind == LLM:
        assert m.llm is not None
        graph = md.read_verified("decoder")
        ctx = m.llm.context_length
        if m.llm.kv_cache:  # one token at positions 0..3: token_macs + pair_macs*(p+1)
            pts = [(p + 1, count_macs(graph, _llm_dim(1, 1, p))) for p in range(4)]
            token, pair, c2 = _fit_quadratic(pts, "decoder")
            if c2:
                raise CostError("decoder: one token's MACs grow faster than its position")
        else:  # the whole sequence each call: L*token_macs + L^2*pair_macs
            pts = [(n, count_macs(graph, _llm_dim(1, n, 0))) for n in (1, 2, 3, 5)]
            c0, token, pair = _fit_quadratic(pts, "decoder")
            if c0:
                raise CostError("decoder: a run costs MACs that no token accounts for")
        return ModelCost(
            model_id=md.model_id,
            kind=COST_KIND_LLM,
            token_macs=token,
            pair_macs=pair,
            max_prompt_tokens=ctx - 1,
            max_total_tokens=ctx,
        )
    if m.kind != DIFFUSION:
        raise CostError(f"model kind {m.kind!r} has no cost model")
    d = m.diffusion
    assert d is not None
    unet, vae, text = (md.read_verified(r) for r in ("unet", "vae_decoder", "text_encoder"))
    base = max(1, d.min_size // d.vae_scale_factor)
    sides = [base, 2 * base, 3 * base, 4 * base]
    step = _fit_quadratic([(s * s, count_macs(unet, _image_dim(1, s))) for s in sides], "unet")
    decode = _fit_quadratic([(s * s, count_macs(vae, _image_dim(1, s))) for s in sides], "vae")
    text_macs = count_macs(text, _image_dim(1, 0))
    side = d.max_size // d.vae_scale_factor
    return ModelCost(
        model_id=md.model_id,
        kind=COST_KIND_DIFFUSION,
        step_fixed=step[0],
        step_pixel=step[1],
        step_pixel2=step[2],
        text_macs=text_macs,
        decode_fixed=decode[0],
        decode_pixel=decode[1],
        decode_pixel2=decode[2],
        max_steps=MAX_DIFFUSION_STEPS,
        max_latent_pixels=side * side,
        vae_scale_factor=d.vae_scale_factor,
    )


def check_cost(md: ModelDir, claimed: ModelCost, actual: ModelCost | None = None) -> None:
    """Raise CostError unless ``claimed`` is exactly the cost counted from ``md``'s files
    (``actual``, when already counted): what a node hosting the model checks before it
    accepts a registration."""
    actual = actual if actual is not None else measure_cost(md)
    if claimed != actual:
        diff = [
            f.name
            for f in dataclasses.fields(ModelCost)
            if getattr(claimed, f.name) != getattr(actual, f.name)
        ]
        raise CostError(f"registered cost differs from the model's in {', '.join(diff)}")
