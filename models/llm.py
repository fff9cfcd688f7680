"""The LLM runner: optimum-layout ONNX decoders with KV cache, seeded sampling, prefill.

A decoder exported by Hugging Face optimum takes ``input_ids``, ``attention_mask``,
``position_ids`` (when exported with them) and, with KV cache, ``past_key_values.N.key`` /
``.value``; it returns ``logits`` and ``present.N.key`` / ``.value``. Models exported
without cache read the whole sequence every step; both go through :meth:`LlmRunner.generate`.
Three export layouts run: one graph taking zero-length past at the first step (current
optimum, ``model.onnx``), the older merged decoder that also takes ``use_cache_branch``
(``decoder_model_merged.onnx``), and split decoders: role ``decoder`` without past for the
prompt, role ``decoder_with_past`` for every later step. A single-graph decoder whose
attention is ONNX Runtime's GroupQueryAttention (onnxruntime-genai's layout) decodes with
one shared buffer per cache tensor (:class:`~.kvcache.SharedKvCache`, D91).
:meth:`LlmRunner.prefill` is the validator's entry point: the logits at every position of a
sequence in one pass, no cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import ModelError
from .kvcache import BoundKvCache, KvCachePool, SharedKvCache, binds_on, shares_kv
from .manifest import LLM, LlmInterface, ModelDir, load_model_dir
from .sampling import SamplingParams, choose_token
from .session import ExecutionProfile, SessionFactory, run_session
from .tokenizer import Tokenizer

__all__ = ["Generation", "LlmRunner", "Timings", "TokenEvent"]

WITH_PAST_ROLE = "decoder_with_past"
_PAST_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
STOP_WINDOW = 4 * 64 + 8
FINISH_STOP = "stop"  # end-of-sequence token or a stop string
FINISH_LENGTH = "length"  # max_tokens or the context is full


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its index in the output, its id, and the logits it was drawn from."""

    index: int
    token_id: int
    logits: np.ndarray


@dataclass(frozen=True)
class Timings:
    """Wall-clock nanoseconds of a generation (not part of any result that is compared)."""

    prefill_ns: int
    decode_ns: int
    total_ns: int
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / (self.total_ns / 1e9) if self.total_ns else 0.0


@dataclass(frozen=True)
class Generation:
    """The result of a job: ``token_ids`` are every generated id (an end-of-sequence id
    included); ``text`` is their text, cut before a stop string."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    timings: Timings


@dataclass(frozen=True)
class _Graph:
    """What the loaded decoder takes: cache layout and whether it wants position ids."""

    kv_cache: bool
    position_ids: bool
    use_cache_branch: bool  # optimum's merged decoders pick their branch by this input
    past_names: tuple[str, ...]
    output_names: tuple[str, ...]  # "logits", then present.N.key/value in past order
    past_dtype: type  # float32, or float16 for exports with a half-precision cache


class LlmRunner:
    """Runs one LLM: tokenizer, one deterministic session, generation and prefill.

    ``model`` is a model directory path or a :class:`ModelDir` (e.g. from the blob store).
    Files are hash-checked as they are read; the graph is checked against the manifest's
    interface. ``session_factory`` defaults to ``SessionFactory(threads=threads or 1)``.
    ``use_kv_cache=False`` recomputes the whole sequence every step even when the graph has
    a cache; ``io_binding=False`` decodes with plain ``session.run`` instead of binding the
    cache into preallocated buffers (:mod:`.kvcache`; same tokens and logits, bit for
    bit). ``kv_layout`` says how a generation's cache is held: ``"shared"`` (one buffer
    per tensor bound as past and present: GroupQueryAttention decoders), ``"ping-pong"``
    (:class:`~.kvcache.BoundKvCache`), ``"plain"`` (``session.run``) or ``"none"``.
    Raises ModelError for anything wrong with the model.
    """

    def __init__(
        self,
        model: ModelDir | Path | str,
        session_factory: SessionFactory | None = None,
        *,
        threads: int | None = None,
        use_kv_cache: bool = True,
        io_binding: bool = True,
    ) -> None:
        self.model = model if isinstance(model, ModelDir) else load_model_dir(model)
        manifest = self.model.manifest
        if manifest.kind != LLM or manifest.llm is None:
            raise ModelError(f"model {manifest.name!r} is a {manifest.kind} model, not an llm")
        self.interface: LlmInterface = manifest.llm
        self.factory = session_factory or SessionFactory(threads=threads or 1)
        self.tokenizer = Tokenizer(
            self.model.read_verified(manifest.tokenizer.role),
            manifest.tokenizer,
            self.interface.vocab_size,
        )
        if self.tokenizer.vocab_size > self.interface.vocab_size:
            raise ModelError("tokenizer vocabulary is larger than the model's vocab_size")
        self.session = self.factory.create_for(self.model, "decoder")
        # Split exports (optimum's decoder_model + decoder_with_past_model): the first
        # session reads the prompt without past, the second every later step.
        self.past_session: ort.InferenceSession | None = None
        if WITH_PAST_ROLE in {f.role for f in manifest.files}:
            self.past_session = self.factory.create_for(self.model, WITH_PAST_ROLE)
            self._graph = _check_graph(self.past_session, self.interface, WITH_PAST_ROLE)
            self._first = _check_first(self.session, self.interface, self._graph)
        else:
            self._graph = _check_graph(self.session, self.interface)
            self._first = self._graph
        self.use_kv_cache = use_kv_cache and self._graph.kv_cache
        # Split exports decode with plain session.run: BoundKvCache binds one graph that
        # takes the past at every step, and a split export's first graph takes none.
        self.io_binding = (
            io_binding
            and self.use_kv_cache
            and self.past_session is None
            and binds_on(self.session)
        )
        self.shared_kv = self.io_binding and _shares_kv(self.model, self._graph)
        self.kv_layout = (
            ("shared" if self.shared_kv else "ping-pong")
            if self.io_binding
            else ("plain" if self.use_kv_cache else "none")
        )
        self._kv_pool = KvCachePool(self._bound_cache, self.context_length)
        self.profile: ExecutionProfile = self.factory.profile(self.model.model_id)
        self._empty_past = np.zeros(
            (1, self.interface.num_heads, 0, self.interface.head_dim), self._graph.past_dtype
        )

    @property
    def context_length(self) -> int:
        """Most tokens (prompt and output) one sequence may hold."""
        return self.interface.context_length

    # -- the two entry points -----------------------------------------------------------

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int,
        on_token: Callable[[TokenEvent], None] | None = None,
    ) -> Generation:
        """Generate from ``prompt_ids`` under ``params`` with job ``seed`` (u64).

        ``on_token`` is called with every token as soon as it is chosen (streaming; a
        worker's commitment to the logits). Stops at end-of-sequence, a stop string,
        ``params.max_tokens`` or the end of the context. Raises ModelError before any work
        for a prompt that is empty, has ids outside the vocabulary, or fills the context.
        """
        self.check_prompt(prompt_ids)
        _check_seed(seed)
        if not isinstance(params, SamplingParams):
            raise ModelError("params must be SamplingParams")
        budget = min(params.max_tokens, self.context_length - len(prompt_ids))
        start = time.perf_counter_ns()
        cache = self._kv_pool.take(len(prompt_ids) + budget) if self.io_binding else None
        if cache is not None:
            step = cache.steps(prompt_ids)
        elif self.use_kv_cache:
            step = self._cached_steps(prompt_ids)
        else:
            step = self._full_steps(prompt_ids)
        logits = next(step)
        prefill_done = time.perf_counter_ns()
        tokens: list[int] = []
        text: str | None = None  # set when a stop string cut it
        finish = FINISH_LENGTH
        for index in range(budget):
            token = choose_token(logits, params, seed, index)
            tokens.append(token)
            if on_token is not None:
                on_token(TokenEvent(index, token, logits))
            if self.tokenizer.is_eos(token):
                finish = FINISH_STOP
                break
            if params.stop and self._stop_in_tail(tokens, params.stop):
                full = self.tokenizer.decode(tokens)
                cut = _stop_position(full, params.stop)
                if cut is not None:
                    text, finish = full[:cut], FINISH_STOP
                    break
            if index + 1 < budget:
                logits = step.send(token)
        end = time.perf_counter_ns()
        step.close()
        if cache is not None:
            self._kv_pool.give(cache)
        if text is None:
            text = self.tokenizer.decode(tokens)
        timings = Timings(prefill_done - start, end - prefill_done, end - start, len(tokens))
        return Generation(list(prompt_ids), tokens, text, finish, timings)

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        """float32 logits of shape (len(token_ids), vocab): the logits after every prefix of
        ``token_ids``, in one pass without cache. Row i predicts token i + 1."""
        self.check_sequence(token_ids)
        ids = np.asarray([token_ids], np.int64)
        return _float32(self._run(ids, 0, self._empty_pasts())[0][0])

    def _stop_in_tail(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        """Whether a stop string ends in the text of the last tokens. Decoding only a tail
        keeps long generations linear; a stop string of 64 characters spans at most
        STOP_WINDOW tokens (4 byte-fallback tokens per character)."""
        tail = self.tokenizer.decode(tokens[-STOP_WINDOW:])
        return any(s and s in tail for s in stops)

    # -- checks ---------------------------------------------------------------------------

    def check_prompt(self, prompt_ids: list[int]) -> None:
        """Raise ModelError unless ``prompt_ids`` leaves room for at least one token."""
        self.check_sequence(prompt_ids)
        if len(prompt_ids) >= self.context_length:
            raise ModelError(
                f"prompt of {len(prompt_ids)} tokens leaves no room in the model's "
                f"{self.context_length}-token context"
            )

    def check_sequence(self, token_ids: list[int]) -> None:
        """Raise ModelError unless ``token_ids`` is 1..context ids inside the vocabulary."""
        if not token_ids:
            raise ModelError("a token sequence must not be empty")
        if len(token_ids) > self.context_length:
            raise ModelError(
                f"{len(token_ids)} tokens are over the model's {self.context_length}-token context"
            )
        vocab = self.interface.vocab_size
        for i in token_ids:
            if type(i) not in (int, np.int64) or not 0 <= i < vocab:
                raise ModelError(f"token id {i!r} is outside the vocabulary [0, {vocab})")

    # -- decoding ---------------------------------------------------------------------------

    def _cached_steps(self, prompt_ids: list[int]):
        """Coroutine: yields the next-token logits; is sent each chosen token."""
        ids = np.asarray([prompt_ids], np.int64)
        outputs = self._run(ids, 0, self._empty_pasts())
        length = len(prompt_ids)
        while True:
            logits = _float32(outputs[0][0, -1])
            pasts = outputs[1:]
            token = yield logits
            outputs = self._run(np.asarray([[token]], np.int64), length, pasts)
            length += 1

    def _bound_cache(self, capacity: int) -> BoundKvCache | SharedKvCache:
        g = self._graph
        common = dict(
            heads=self.interface.num_heads,
            head_dim=self.interface.head_dim,
            vocab=self.interface.vocab_size,
            capacity=capacity,
            dtype=g.past_dtype,
            position_ids=g.position_ids,
        )
        if self.shared_kv:
            return SharedKvCache(self.session, g.past_names, g.output_names[1:], **common)
        return BoundKvCache(
            self.session,
            g.past_names,
            g.output_names[1:],
            use_cache_branch=g.use_cache_branch,
            **common,
        )

    def _full_steps(self, prompt_ids: list[int]):
        """Coroutine like :meth:`_cached_steps`, reading the whole sequence every step."""
        sequence = list(prompt_ids)
        while True:
            outputs = self._run(np.asarray([sequence], np.int64), 0, self._empty_pasts())
            token = yield _float32(outputs[0][0, -1])
            sequence.append(token)

    def _empty_pasts(self) -> list[np.ndarray]:
        return [self._empty_past] * len(self._graph.past_names)

    def _run(self, ids: np.ndarray, past_length: int, pasts: list[np.ndarray]) -> list:
        total = past_length + ids.shape[1]
        split = self.past_session is not None and past_length > 0
        graph, session = (self._graph, self.past_session) if split else (self._first, self.session)
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64)}
        if graph.position_ids:
            feeds["position_ids"] = np.arange(past_length, total, dtype=np.int64)[None, :]
        if graph.past_names:
            feeds.update(zip(graph.past_names, pasts, strict=True))
        if graph.use_cache_branch:
            feeds["use_cache_branch"] = np.asarray([past_length > 0])
        return run_session(
            session, graph.output_names, feeds, WITH_PAST_ROLE if split else "decoder"
        )


def _shares_kv(model: ModelDir, graph: _Graph) -> bool:
    """Whether the decoder's cache pairs are GroupQueryAttention past/present pairs (read
    from the graph's nodes, weights not loaded; the session runs the hash-checked bytes,
    and a graph that is not what this says fails its first run with a ModelError)."""
    import onnx

    if graph.use_cache_branch or not graph.past_names:
        return False
    try:
        proto = onnx.load_model(str(model.paths["decoder"]), load_external_data=False)
    except Exception:
        return False
    return shares_kv(proto.graph, graph.past_names, graph.output_names[1:])


def _float32(logits: np.ndarray) -> np.ndarray:
    """Logits as float32 (the sampling rule's input), whatever the export produces."""
    return logits if logits.dtype == np.float32 else logits.astype(np.float32)


def _check_seed(seed: int) -> None:
    if type(seed) is not int or not 0 <= seed < 2**64:
        raise ModelError(f"seed must be an integer in [0, 2**64), got {seed!r}")


def _stop_position(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _check_io(session: ort.InferenceSession, llm: LlmInterface, role: str) -> tuple[dict, list]:
    """The inputs (by name) and output names, after checking the ones every decoder has."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    for name in ("input_ids", "attention_mask"):
        if name not in inputs or inputs[name].type != "tensor(int64)":
            raise ModelError(f"{role} graph has no int64 input {name!r}")
    if "logits" not in outputs:
        raise ModelError(f"{role} graph has no output 'logits'")
    logits = next(o for o in session.get_outputs() if o.name == "logits")
    _check_dim(logits.shape, -1, llm.vocab_size, "logits vocab")
    if "use_cache_branch" in inputs and inputs["use_cache_branch"].type != "tensor(bool)":
        raise ModelError(f"{role} graph: use_cache_branch must be a bool input")
    return inputs, outputs


def _check_first(session: ort.InferenceSession, llm: LlmInterface, with_past: _Graph) -> _Graph:
    """The first graph of a split export: no past inputs; the present outputs the graph
    with past reads next."""
    inputs, outputs = _check_io(session, llm, "decoder")
    if not with_past.kv_cache:
        raise ModelError(f"a model with a {WITH_PAST_ROLE} graph must have kv_cache")
    if any(n.startswith("past_key_values.") for n in inputs):
        raise ModelError(
            f"decoder graph of a split export takes past_key_values ({WITH_PAST_ROLE} does)"
        )
    presents = with_past.output_names[1:]
    missing = [n for n in presents if n not in outputs]
    if missing:
        raise ModelError(f"decoder graph does not match its manifest: missing {missing[0]}")
    extra = sorted(set(inputs) - {"input_ids", "attention_mask", "position_ids"})
    if extra:
        raise ModelError(f"decoder graph has unexpected input(s) {', '.join(extra)}")
    return _Graph(
        kv_cache=True,
        position_ids="position_ids" in inputs,
        use_cache_branch=False,
        past_names=(),
        output_names=with_past.output_names,
        past_dtype=with_past.past_dtype,
    )


def _check_graph(session: ort.InferenceSession, llm: LlmInterface, role: str = "decoder") -> _Graph:
    """The decoder's layout, after checking it is the one the manifest declares."""
    inputs, outputs = _check_io(session, llm, role)
    past_names = tuple(
        f"past_key_values.{i}.{kind}" for i in range(llm.num_layers) for kind in ("key", "value")
    )
    present_names = tuple(n.replace("past_key_values", "present") for n in past_names)
    has_past = [n for n in inputs if n.startswith("past_key_values.")]
    if llm.kv_cache:
        missing = [n for n in past_names if n not in inputs] + [
            n for n in present_names if n not in outputs
        ]
        if missing:
            raise ModelError(
                f"decoder graph does not match its manifest (kv_cache, {llm.num_layers} layers): "
                f"missing {missing[0]}"
            )
        if len(has_past) != len(past_names):
            raise ModelError(
                f"decoder graph has {len(has_past)} past inputs, manifest says {len(past_names)}"
            )
        past_types = {inputs[n].type for n in past_names}
        if not past_types <= set(_PAST_TYPES) or len(past_types) != 1:
            raise ModelError(f"decoder graph: past_key_values have types {sorted(past_types)}")
        for name in past_names:
            shape = inputs[name].shape
            _check_dim(shape, 1, llm.num_heads, f"{name} heads")
            _check_dim(shape, 3, llm.head_dim, f"{name} head_dim")
    elif has_past:
        raise ModelError("decoder graph takes past_key_values but the manifest says no kv_cache")
    known = {"input_ids", "attention_mask", "position_ids", "use_cache_branch", *past_names}
    extra = sorted(set(inputs) - known)
    if extra:
        raise ModelError(f"decoder graph has unexpected input(s) {', '.join(extra)}")
    return _Graph(
        kv_cache=llm.kv_cache,
        position_ids="position_ids" in inputs,
        use_cache_branch="use_cache_branch" in inputs,
        past_names=past_names if llm.kv_cache else (),
        output_names=("logits", *present_names) if llm.kv_cache else ("logits",),
        past_dtype=_PAST_TYPES[inputs[past_names[0]].type] if llm.kv_cache else np.float32,
    )


def _check_dim(shape: list, axis: int, want: int, what: str) -> None:
    if len(shape) < (axis + 1 if axis >= 0 else -axis):
        raise ModelError(f"decoder graph: {what}: tensor has rank {len(shape)}")
    have = shape[axis]
    if isinstance(have, int) and have != want:
        raise ModelError(f"decoder graph: {what} is {have}, the manifest says {want}")
