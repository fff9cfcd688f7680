"""KV cache decoding with ONNX Runtime IO binding into preallocated buffers (D53, D91).

An optimum-layout decoder returns ``present.N.*`` = Concat(``past_key_values.N.*``, new)
of shape (1, heads, past + n, head_dim). With plain ``session.run`` every step has ONNX
Runtime allocate 2 x layers fresh output tensors, and the next step feeds them back.
:class:`BoundKvCache` instead owns two preallocated buffer sets sized for the whole
generation (prompt + budget), and each step binds the past as a view of one set and
the present as an output written straight into the other (ping-pong), with the logits
of a decode step written into a preallocated buffer too. Nothing is allocated per step
and nothing of the cache is copied outside the graph.

What cannot be avoided with this layout: the graph's own Concat still writes the whole
cache once per step (a past of length L is not a prefix of a present of length L + 1 in
memory when there is more than one head), so true in-place sharing of past and present —
what onnxruntime-genai does with its GroupQueryAttention graphs — is impossible here.
``bench/inference.py`` measures what the binding buys against the plain path.

The graph computes exactly what it computes under ``session.run`` (same kernels, same
inputs): tokens and logits are bit-identical to the plain path, which tests check.
Only the CPU execution provider is bound this way; the runner keeps the plain path on
any other.

:class:`SharedKvCache` is that sharing, for decoders whose attention is ONNX Runtime's
``com.microsoft`` GroupQueryAttention (onnxruntime-genai's layout, D91; :func:`shares_kv`
recognises one). Fed a past of a fixed capacity C, the op returns a present of capacity
C, and its CPU kernel, when the present's memory *is* the past's (it compares the
pointers), writes only the new positions and reads only the first ``total`` ones. So one
buffer of (1, kv_heads, C, head_dim) per tensor is bound as both the past input and the
present output for the whole generation: per step nothing of the cache is copied,
and attention costs what its context costs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence

import numpy as np
import onnxruntime as ort

from .errors import ModelError
from .session import ORT_ERRORS

__all__ = ["BoundKvCache", "KvCachePool", "SharedKvCache", "binds_on", "shares_kv"]

_CPU = "CPUExecutionProvider"
CAPACITY_STEP = 256  # capacities are rounded up to this, so one cache serves most prompts


def binds_on(session: ort.InferenceSession) -> bool:
    """Whether :class:`BoundKvCache` runs ``session`` (it is on the CPU provider)."""
    return session.get_providers()[:1] == [_CPU]


class BoundKvCache:
    """The KV cache of one generation of at most ``capacity`` tokens.

    ``past_names`` and ``present_names`` pair up in order; ``position_ids`` and
    ``use_cache_branch`` say which optional inputs the graph takes.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        past_names: Sequence[str],
        present_names: Sequence[str],
        *,
        heads: int,
        head_dim: int,
        vocab: int,
        capacity: int,
        dtype: type,
        position_ids: bool,
        use_cache_branch: bool,
    ) -> None:
        self.session = session
        self.past_names = tuple(past_names)
        self.present_names = tuple(present_names)
        self.heads, self.head_dim, self.capacity = heads, head_dim, capacity
        self.dtype = np.dtype(dtype)
        self.position_ids = position_ids
        self.use_cache_branch = use_cache_branch
        per_tensor = heads * capacity * head_dim
        n = len(self.past_names)
        # Two sets, one row per past tensor; np.empty maps pages only as they are written.
        self._sets = [np.empty((n, per_tensor), self.dtype) for _ in range(2)]
        # Raw addresses, computed once: a numpy ``ctypes.data`` per binding costs more
        # than the binding itself.
        self._ptrs = [[int(row.ctypes.data) for row in rows] for rows in self._sets]
        self._pairs = tuple(zip(self.past_names, self.present_names, strict=True))
        self._logits = np.empty((1, 1, vocab), _output_dtype(session, "logits"))
        self._logits_ptr = int(self._logits.ctypes.data)
        self._mask = np.ones((1, capacity), np.int64)
        self._positions = np.arange(capacity, dtype=np.int64)[None, :]
        self._ids = np.zeros((1, 1), np.int64)
        self._io = session.io_binding()

    def steps(self, prompt_ids: Sequence[int]) -> Generator[np.ndarray, int, None]:
        """Coroutine: yields the next-token logits (float32, a fresh array each time);
        is sent each chosen token. Raises ModelError past ``capacity`` tokens or when
        the graph fails."""
        ids = np.asarray([list(prompt_ids)], np.int64)
        logits = self._run(ids, 0, 0)
        length, current = ids.shape[1], 1
        while True:
            token = yield logits
            self._ids[0, 0] = token
            logits = self._run(self._ids, length, current)
            length, current = length + 1, 1 - current

    def _run(self, ids: np.ndarray, past: int, current: int) -> np.ndarray:
        """One pass over ``ids`` after ``past`` cached tokens held in set ``current``;
        the presents go to the other set. Returns the last position's logits."""
        n = ids.shape[1]
        total = past + n
        if total > self.capacity:
            raise ModelError(f"kv cache: {total} tokens are over its capacity of {self.capacity}")
        io = self._io
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", self._mask[:, :total])
        if self.position_ids:
            io.bind_cpu_input("position_ids", self._positions[:, past:total])
        branch = np.asarray([past > 0])  # alive until the run: the binding points at it
        if self.use_cache_branch:
            io.bind_cpu_input("use_cache_branch", branch)
        src, dst = self._sets[current], self._ptrs[1 - current]
        past_shape = (1, self.heads, past, self.head_dim)
        size = self.heads * past * self.head_dim
        present_shape = [1, self.heads, total, self.head_dim]
        if n == 1:  # logits first: get_outputs() lists outputs in binding order
            buf = self._logits
            io.bind_output("logits", "cpu", 0, buf.dtype, list(buf.shape), self._logits_ptr)
        else:
            io.bind_output("logits", "cpu")  # a prefill's (1, n, vocab): onnxruntime allocates
        dtype = self.dtype
        for i, (pname, oname) in enumerate(self._pairs):
            # A numpy view binds cheaper than a raw address (onnxruntime reads it in place).
            io.bind_cpu_input(pname, src[i, :size].reshape(past_shape))
            io.bind_output(oname, "cpu", 0, dtype, present_shape, dst[i])
        try:
            self.session.run_with_iobinding(io)
        except ORT_ERRORS as e:
            raise ModelError(f"decoder failed to run: {str(e).strip()[:300]}") from None
        row = self._logits[0, -1] if n == 1 else io.get_outputs()[0].numpy()[0, -1]
        return row.astype(np.float32, copy=True)  # the buffer is rewritten next step


class SharedKvCache:
    """The KV cache of one generation of at most ``capacity`` tokens on a
    GroupQueryAttention decoder: one buffer per past tensor, bound as past and present.

    Same interface as :class:`BoundKvCache` (:meth:`steps`). The buffers are bound once;
    a step rebinds only the ids, the mask and positions of its length, and the logits.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        past_names: Sequence[str],
        present_names: Sequence[str],
        *,
        heads: int,
        head_dim: int,
        vocab: int,
        capacity: int,
        dtype: type,
        position_ids: bool,
    ) -> None:
        self.session = session
        self.heads, self.head_dim, self.capacity = heads, head_dim, capacity
        self.dtype = np.dtype(dtype)
        self.position_ids = position_ids
        n = len(past_names)
        # Zeros: calloc'd pages, mapped as they are written; positions past a step's total
        # are never read by the kernel, so a reused cache needs no clearing.
        self.buffers = np.zeros((n, 1, heads, capacity, head_dim), self.dtype)
        self._logits = np.empty((1, 1, vocab), _output_dtype(session, "logits"))
        self._logits_ptr = int(self._logits.ctypes.data)
        self._mask = np.ones((1, capacity), np.int64)
        self._positions = np.arange(capacity, dtype=np.int64)[None, :]
        self._ids = np.zeros((1, 1), np.int64)
        self._io = io = session.io_binding()
        shape = list(self.buffers.shape[1:])
        for i, (pname, oname) in enumerate(zip(past_names, present_names, strict=True)):
            buf = self.buffers[i]
            io.bind_cpu_input(pname, buf)  # onnxruntime reads it in place (contiguous)
            io.bind_output(oname, "cpu", 0, self.dtype, shape, int(buf.ctypes.data))

    def steps(self, prompt_ids: Sequence[int]) -> Generator[np.ndarray, int, None]:
        """Coroutine: yields the next-token logits (float32, a fresh array each time);
        is sent each chosen token. Raises ModelError past ``capacity`` tokens or when
        the graph fails."""
        ids = np.asarray([list(prompt_ids)], np.int64)
        logits = self._run(ids, 0)
        length = ids.shape[1]
        while True:
            token = yield logits
            self._ids[0, 0] = token
            logits = self._run(self._ids, length)
            length += 1

    def _run(self, ids: np.ndarray, past: int) -> np.ndarray:
        n = ids.shape[1]
        total = past + n
        if total > self.capacity:
            raise ModelError(f"kv cache: {total} tokens are over its capacity of {self.capacity}")
        io = self._io
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", self._mask[:, :total])
        if self.position_ids:
            io.bind_cpu_input("position_ids", self._positions[:, past:total])
        if n == 1:
            buf, ptr = self._logits, self._logits_ptr
        else:  # a prefill's (1, n, vocab), once per generation
            buf = np.empty((1, n, self._logits.shape[2]), self._logits.dtype)
            ptr = int(buf.ctypes.data)
        io.bind_output("logits", "cpu", 0, buf.dtype, list(buf.shape), ptr)
        try:
            self.session.run_with_iobinding(io)
        except ORT_ERRORS as e:
            raise ModelError(f"decoder failed to run: {str(e).strip()[:300]}") from None
        return buf[0, -1].astype(np.float32, copy=True)  # the buffer is rewritten next step


def shares_kv(graph, past_names: Sequence[str], present_names: Sequence[str]) -> bool:
    """Whether every past/present pair of the decoder ``graph`` (an onnx GraphProto) is the
    past and present of one ``com.microsoft`` GroupQueryAttention node (past key and value
    its inputs 3 and 4, present key and value its outputs 1 and 2), and read by nothing
    else: then :class:`SharedKvCache` may bind each pair to one buffer."""
    pairs = dict(zip(past_names, present_names, strict=True))
    if not pairs:
        return False
    done: set[str] = set()
    for node in graph.node:
        pasts = [i for i in node.input if i in pairs]
        if not pasts:
            continue
        gqa = node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft"
        if not gqa or len(node.input) < 5 or len(node.output) < 3:
            return False
        key, value = node.input[3], node.input[4]
        if pasts != [key, value] or [pairs[key], pairs[value]] != list(node.output[1:3]):
            return False
        done.update(pasts)
    return done == set(pairs)


class KvCachePool:
    """One spare :class:`BoundKvCache` kept between generations, so that a runner's
    buffers are allocated (and their pages mapped) once rather than per job. ``make``
    builds a cache of a given capacity. A generation :meth:`take` s the spare (or a new,
    larger one) and :meth:`give` s it back; concurrent generations never share one."""

    def __init__(self, make: Callable[[int], BoundKvCache | SharedKvCache], most: int):
        self.make = make
        self.most = most  # the model's context: no cache is larger
        self._spare: BoundKvCache | SharedKvCache | None = None
        self._lock = threading.Lock()

    def take(self, capacity: int) -> BoundKvCache | SharedKvCache:
        with self._lock:
            cache, self._spare = self._spare, None
        if cache is None or cache.capacity < capacity:
            rounded = -(-capacity // CAPACITY_STEP) * CAPACITY_STEP
            cache = self.make(max(capacity, min(self.most, rounded)))
        return cache

    def give(self, cache: BoundKvCache | SharedKvCache) -> None:
        with self._lock:
            if self._spare is None or self._spare.capacity < cache.capacity:
                self._spare = cache


def _output_dtype(session: ort.InferenceSession, name: str) -> type:
    kind = next(o.type for o in session.get_outputs() if o.name == name)
    return np.float16 if kind == "tensor(float16)" else np.float32
