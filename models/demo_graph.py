"""Building the demo models' ONNX graphs: seeded weights, a small graph helper, writing files.

Weights come from SHAKE-256 of (seed, tensor name) mapped to uniforms with exact integer
arithmetic, and models are serialized with fixed producer fields, so the same builder
call gives the same bytes on every machine (see :mod:`aipg.models.demo`).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError

OPSET = 17
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops (GroupQueryAttention)
IR_VERSION = 8  # readable by every onnxruntime >= 1.14
PRODUCER = "aipg-node demo"
LICENSE = "Apache-2.0"
DTYPES = ("float32", "float16", "int8")


class Graph:
    """A small helper over onnx.helper: named nodes, seeded initializers."""

    def __init__(self, seed: int, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.seed = seed
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, name: str, array: np.ndarray) -> str:
        """An exact constant (shapes, indices, biases of zero): never converted to fp16."""
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        """A seeded weight, uniform in [-scale, scale]. Stored as float32; or as float16 and
        cast back; or as int8 with one symmetric scale per tensor and dequantized in-graph."""
        array = seeded_uniform(self.seed, name, shape, scale)
        if self.dtype == "float32":
            return self.const(name, array)
        if self.dtype == "float16":
            self.const(name + "_fp16", array.astype(np.float16))
            return self.op("Cast", [name + "_fp16"], to=TensorProto.FLOAT)
        step = np.float32(np.abs(array).max() / np.float32(127)) or np.float32(1)
        quantized = np.clip(np.round(array / step), -127, 127).astype(np.int8)
        self.const(name + "_int8", quantized)
        self.const(name + "_scale", np.array(step, np.float32))
        self.const(name + "_zero", np.array(0, np.int8))
        return self.op("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"])

    def ones(self, name: str, n: int) -> str:
        return self.const(name, np.ones(n, np.float32))

    def zeros(self, name: str, n: int) -> str:
        return self.const(name, np.zeros(n, np.float32))

    def linear(self, x: str, name: str, d_in: int, d_out: int, bias: bool = True) -> str:
        y = self.op(
            "MatMul", [x, self.weight(name + ".weight", (d_in, d_out), 1 / math.sqrt(d_in))]
        )
        if bias:
            y = self.op("Add", [y, self.weight(name + ".bias", (d_out,), 0.02)])
        return y

    def layer_norm(self, x: str, name: str, dim: int) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.ones(name + ".gamma", dim), self.zeros(name + ".beta", dim)],
            axis=-1,
            epsilon=1e-5,
        )

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self, name: str, inputs, outputs, *, half_io: bool = False) -> bytes:
        """Serialize the graph. ``half_io`` makes every float input and output float16 at
        the boundary (as fp16 exports are), computing in float32 inside."""
        if half_io:
            inputs, outputs = self._half_boundary(inputs, outputs)
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(node.domain == MS_DOMAIN for node in self.nodes):
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name=PRODUCER,
            producer_version="1",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model)
        return model.SerializeToString(deterministic=True)

    def _half_boundary(self, inputs, outputs):
        new_inputs, new_outputs, casts = [], [], []
        for vi in inputs:
            if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
                new_inputs.append(vi)
                continue
            inner = vi.name + "_f32"
            for node in self.nodes:
                node.input[:] = [inner if i == vi.name else i for i in node.input]
            casts.append(helper.make_node("Cast", [vi.name], [inner], to=TensorProto.FLOAT))
            new_inputs.append(value_info(vi.name, TensorProto.FLOAT16, _dims(vi)))
        self.nodes[:0] = casts
        for vi in outputs:
            if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
                new_outputs.append(vi)
                continue
            inner = vi.name + "_f32"
            for node in self.nodes:
                node.output[:] = [inner if o == vi.name else o for o in node.output]
            self.nodes.append(helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT16))
            new_outputs.append(value_info(vi.name, TensorProto.FLOAT16, _dims(vi)))
        return new_inputs, new_outputs


def attention_bias(g: Graph) -> str:
    """[B, 1, S, T] additive causal mask: key j is visible to a query at position p iff j <= p and
    attention_mask[j] is 1 (positions are absolute, so this holds with and without cache)."""
    total = g.op("Shape", ["attention_mask"], start=1, end=2)
    total = g.op("Squeeze", [total, g.const("axis0", np.array([0], np.int64))])
    keys = g.op(
        "Range",
        [
            g.const("zero_i64", np.array(0, np.int64)),
            total,
            g.const("one_i64", np.array(1, np.int64)),
        ],
    )
    query_pos = g.op("Unsqueeze", ["position_ids", g.const("axis2", np.array([2], np.int64))])
    causal = g.op("LessOrEqual", [keys, query_pos])
    mask = g.op("Unsqueeze", ["attention_mask", g.const("axis1", np.array([1], np.int64))])
    visible = g.op("And", [causal, g.op("Cast", [mask], to=TensorProto.BOOL)])
    bias = g.op(
        "Where",
        [
            visible,
            g.const("zero_f", np.array(0.0, np.float32)),
            g.const("neg_inf", np.array(-1e9, np.float32)),
        ],
    )
    return g.op("Unsqueeze", [bias, "axis1"])


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def seeded_uniform(seed: int, name: str, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """float32 uniforms in [-scale, scale] from SHAKE-256(seed, name); exact on every machine."""
    n = int(np.prod(shape))
    stream = hashlib.shake_256(b"aipg/demo-weights/1\0%d\0%s" % (seed, name.encode())).digest(4 * n)
    bits = np.frombuffer(stream, dtype="<u4") >> np.uint32(8)  # 24 bits: exact in float32
    unit = bits.astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)
    return (unit * np.float32(scale)).reshape(shape)


def value_info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def write_external(path: Path, model_bytes: bytes, location: str) -> None:
    """Write a model with its weights in ``location`` next to it (as exports over 2 GB are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        onnx.load_from_string(model_bytes),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
