"""`models import` and the three optimum decoder layouts, on exports the test kit writes.

Writes one export per layout (``model``, ``merged``, ``split``; the same seeded weights,
8 layers, grouped-query attention) into a temp dir, imports each (timing the import:
graph checks, hashing, smoke test), then times greedy decoding of each layout, rounds
interleaved so machine noise hits all alike, as CPU time (``time.process_time``) with
medians. Reports tokens/s per layout, each layout's ratio to ``model`` (the reference: 1.0
means the layout costs nothing extra), and whether every layout gave the same ids.

Prints one JSON object as its last line. Usage: ``python bench/hf_import.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from aipg.models import LlmRunner, SamplingParams
from aipg.models.hf_import import import_export
from aipg.testing.hf_exports import LAYOUTS, ExportShape, write_llm_export

SHAPE = ExportShape(layers=8, hidden=256, heads=8, kv_heads=2, d_ff=512, context=512)
PROMPT = "The grid pays for useful work, and every result can be checked by a committee."
TOKENS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runners, import_s = {}, {}
        for layout in LAYOUTS:
            src = write_llm_export(root / layout, layout=layout, shape=SHAPE)
            start = time.process_time()
            out = import_export(src, root / f"{layout}-model")
            import_s[layout] = time.process_time() - start
            runners[layout] = LlmRunner(out)
        params = SamplingParams(max_tokens=TOKENS)
        prompt = runners["model"].tokenizer.encode(PROMPT)
        times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        ids: dict[str, list[int]] = {}
        for r in range(args.rounds):
            order = LAYOUTS if r % 2 == 0 else tuple(reversed(LAYOUTS))
            for layout in order:
                start = time.process_time()
                out = runners[layout].generate(prompt, params, seed=0)
                times[layout].append(time.process_time() - start)
                ids[layout] = out.token_ids
        tps = {layout: TOKENS / statistics.median(t) for layout, t in times.items()}
        result = {
            "layers": SHAPE.layers,
            "hidden": SHAPE.hidden,
            "tokens": TOKENS,
            "prompt_tokens": len(prompt),
            "import_s": {k: round(v, 3) for k, v in import_s.items()},
            "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
            "ratio_to_model": {k: round(v / tps["model"], 3) for k, v in tps.items()},
            "same_ids": len({tuple(v) for v in ids.values()}) == 1,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
