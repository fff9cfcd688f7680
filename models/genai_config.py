"""Reading an onnxruntime-genai model-builder export's ``genai_config.json`` (D93), for
``models import`` (:func:`aipg.models.hf_import.import_genai`).

The builder (``python -m onnxruntime_genai.models.builder``) writes one decoder graph
whose attention is ``com.microsoft`` GroupQueryAttention, its weights (often in
``model.onnx.data``), the tokenizer files and ``genai_config.json``, which names the
graph's file, its inputs and outputs, the layer, head and vocabulary sizes, the context,
the special ids and the default search. With the builder's default names (optimum's:
``input_ids``, ``attention_mask``, ``past_key_values.%d.key``/``.value`` -> ``logits``,
``present.%d.key``/``.value``) the graph is what :class:`~.llm.LlmRunner` runs, and it
decodes into one shared buffer per cache tensor (:class:`~.kvcache.SharedKvCache`).
An export that renames them, feeds ``inputs_embeds`` or has more than a decoder (the
vision and embedding models of multimodal exports) is refused with the reason: close
enough is the builder's text-only LLM layout, nothing else.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError
from .hf_config import HfConfig, _ids, _int, _sampling, read_json
from .manifest import MAX_EOS_IDS

__all__ = ["GENAI_CONFIG", "read_genai_config"]

GENAI_CONFIG = "genai_config.json"

# genai_config.json's decoder I/O keys -> the names the runner reads (the builder's own).
NAMES = {
    "inputs": {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "position_ids": "position_ids",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    },
    "outputs": {
        "logits": "logits",
        "present_key_names": "present.%d.key",
        "present_value_names": "present.%d.value",
    },
}
PIPELINE_PARTS = ("embedding", "vision", "speech", "encoder", "mtp")


def read_genai_config(src: Path) -> tuple[HfConfig, str]:
    """The decoder's numbers from ``genai_config.json`` and its ONNX file's name."""
    w = GENAI_CONFIG
    cfg = read_json(src / w)
    model = cfg.get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict):
        raise ModelError(f"{w}: no model.decoder object")
    extra = [part for part in PIPELINE_PARTS if part in model]
    if extra:
        raise ModelError(
            f"{w}: a pipeline with a {extra[0]} model; only a text decoder is imported"
        )
    filename = decoder.get("filename")
    if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename:
        raise ModelError(f"{w}: model.decoder.filename must be a file name in the export")
    if filename.startswith("."):
        raise ModelError(f"{w}: model.decoder.filename {filename!r} is not a plain file name")
    for side, known in NAMES.items():
        names = decoder.get(side, {})
        if not isinstance(names, dict):
            raise ModelError(f"{w}: model.decoder.{side} must be an object")
        for key, value in names.items():
            if key not in known:
                raise ModelError(f"{w}: decoder {side[:-1]} {key!r} is not one the runner feeds")
            if value != known[key]:
                raise ModelError(
                    f"{w}: decoder {side[:-1]} {key} is named {value!r}; "
                    f"the runner reads the builder's default {known[key]!r}"
                )
    where = f"{w}: model.decoder"
    layers = _int(decoder, ("num_hidden_layers",), where)
    heads = _int(decoder, ("num_attention_heads",), where)
    kv_heads = _int(decoder, ("num_key_value_heads",), where, heads)
    if heads % kv_heads:
        raise ModelError(f"{where}: {heads} attention heads are not a multiple of {kv_heads}")
    hidden = _int(decoder, ("hidden_size",), where, 0) if "hidden_size" in decoder else 0
    head_dim = _int(decoder, ("head_size",), where, hidden // heads if hidden else None)
    vocab = _int(model, ("vocab_size",), f"{w}: model")
    context = _int(model, ("context_length",), f"{w}: model")
    eos = list(dict.fromkeys(_ids(model.get("eos_token_id"), f"{w}: model.eos_token_id")))
    if len(eos) > MAX_EOS_IDS:
        raise ModelError(f"{w}: at most {MAX_EOS_IDS} eos ids, got {len(eos)}")
    bos = _ids(model.get("bos_token_id"), f"{w}: model.bos_token_id")
    pad = _ids(model.get("pad_token_id"), f"{w}: model.pad_token_id")
    search = cfg.get("search", {})
    if not isinstance(search, dict):
        raise ModelError(f"{w}: search must be an object")
    kind = model.get("type")
    return (
        HfConfig(
            num_layers=layers,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            context_length=context,
            name=kind if isinstance(kind, str) and 0 < len(kind) <= 64 else "",
            eos_ids=eos,
            bos_id=bos[0] if bos else None,
            pad_id=pad[0] if pad else None,
            sampling=_sampling(search),  # do_sample, temperature, top_k, top_p: the same keys
        ),
        filename,
    )
