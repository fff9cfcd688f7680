"""The models a node knows: the ones it hosts (files on disk, runners loaded on first
use) and the ones announced on ``/aipg/1/models`` by publishers.

Runners are built lazily and kept: an ONNX session costs seconds to create and each
hosted model keeps one for executing jobs and one for verifying (a verifier's prefill
must not wait behind a worker's generation).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from aipg.models import (
    DIFFUSION,
    LLM,
    DiffusionRunner,
    LlmRunner,
    Manifest,
    ModelDir,
    Tokenizer,
    load_model_dir,
    model_id,
    model_id_text,
)
from aipg.models.cost import ModelCost, measure_cost
from aipg.pouw.bounds import evict_over
from aipg.wire import WireError, parse_content_id

# Work units per token (LLM) or per step and latent pixel (diffusion), x 1000, for a
# model whose manifest names no cost factor: 1 unit per token, 1/1000 unit per pixel-step.
DEFAULT_COST_MILLI = {LLM: 1000, DIFFUSION: 1}
# Models known only by announcement: anyone may announce any manifest, so beyond this
# the least recently announced goes first. Hosted models are never evicted.
MAX_ANNOUNCED_MODELS = 256


@dataclass
class KnownModel:
    manifest: Manifest
    model_dir: ModelDir | None  # None: announced, not hosted here
    first_seen: int
    _runners: dict[str, object] = field(default_factory=dict)
    _tokenizer: Tokenizer | None = None
    _cost: ModelCost | None = None
    # Why this node will neither run nor certify jobs of the model: the cost the chain
    # registered for it is not the one its files give (node/services/costs.py); "" if none.
    cost_refused: str = ""

    @property
    def id(self) -> bytes:
        return model_id(self.manifest)

    @property
    def id_text(self) -> str:
        return model_id_text(self.id)

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def cost_milli(self) -> int:
        return DEFAULT_COST_MILLI[self.kind]

    def measured_cost(self) -> ModelCost:
        """The model's cost counted from its files (hosted models only; computed once).
        Raises ModelError (CostError) when its graphs cannot be counted."""
        if self._cost is None:
            assert self.model_dir is not None, "only a hosted model's cost can be counted"
            self._cost = measure_cost(self.model_dir)
        return self._cost

    @property
    def context_length(self) -> int:
        return self.manifest.llm.context_length if self.manifest.llm else 0


class ModelCatalog:
    """Thread-safe for runner creation (runners are used from worker threads). Bounded:
    every hosted model, and at most MAX_ANNOUNCED_MODELS announced ones."""

    def __init__(self, threads: int = 0):
        self.threads = threads or None
        self._models: OrderedDict[bytes, KnownModel] = (
            OrderedDict()
        )  # least recently announced first
        self._lock = threading.Lock()

    def host(self, path: str | Path) -> KnownModel:
        """Host the model in directory ``path``; checks every file's hash now."""
        md = load_model_dir(path)
        md.verify_all()
        return self.host_model(md)

    def host_model(self, md: ModelDir) -> KnownModel:
        """Host a model whose files are at hand (runners re-check hashes as they load)."""
        known = KnownModel(md.manifest, md, int(time.time()))
        existing = self._models.get(known.id)
        if existing is not None and existing.model_dir is not None:
            return existing
        self._models[known.id] = known
        return known

    def announce(self, manifest: Manifest) -> KnownModel:
        """Record a model announced by a publisher (not hosted here), forgetting the least
        recently announced beyond MAX_ANNOUNCED_MODELS."""
        mid = model_id(manifest)
        if mid not in self._models:
            self._models[mid] = KnownModel(manifest, None, int(time.time()))
        self._models.move_to_end(mid)
        model = self._models[mid]
        hosted = sum(1 for m in self._models.values() if m.model_dir is not None)
        evict_over(self._models, hosted + MAX_ANNOUNCED_MODELS, lambda m: m.model_dir is None)
        return model

    def __len__(self) -> int:
        return len(self._models)

    def get(self, mid: bytes) -> KnownModel | None:
        return self._models.get(mid)

    def hosted(self) -> list[KnownModel]:
        return [m for m in self._models.values() if m.model_dir is not None]

    def all(self) -> list[KnownModel]:
        return sorted(self._models.values(), key=lambda m: (m.manifest.name, m.id))

    def resolve(self, name_or_id: str) -> KnownModel | None:
        """A model by id text (``sha256:...``) or manifest name."""
        if name_or_id.startswith("sha256:"):
            try:
                return self._models.get(parse_content_id(name_or_id))
            except WireError:
                return None
        matches = [m for m in self._models.values() if m.manifest.name == name_or_id]
        hosted = [m for m in matches if m.model_dir is not None]
        return (hosted or matches or [None])[0]

    def runner(self, model: KnownModel, purpose: str = "work"):
        """The model's LlmRunner / DiffusionRunner for ``purpose`` ("work" or "verify")."""
        if model.model_dir is None:
            raise LookupError(f"model {model.manifest.name} is not hosted on this node")
        with self._lock:
            r = model._runners.get(purpose)
            if r is None:
                cls = LlmRunner if model.kind == LLM else DiffusionRunner
                r = cls(model.model_dir, threads=self.threads)
                model._runners[purpose] = r
            return r

    def cached_runner(self, model: KnownModel, purpose: str = "work"):
        """The runner :meth:`runner` built already, or None (a dict read: no lock, so the
        event loop may call it without waiting on a thread that is building one)."""
        return model._runners.get(purpose)

    def tokenizer(self, model: KnownModel) -> Tokenizer | None:
        if model.kind != LLM or model.model_dir is None:
            return None
        with self._lock:
            if model._tokenizer is None:
                info = model.manifest.tokenizer
                vocab = model.manifest.llm.vocab_size if model.manifest.llm else None
                model._tokenizer = Tokenizer(model.model_dir.read_verified(info.role), info, vocab)
            return model._tokenizer
