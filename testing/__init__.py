"""The test kit: deterministic worlds, chains, meshes and models shared by tests/ and bench/.

Each module is one kit; import the one you need (this package imports none of them, so
that importing one never pulls in another's dependencies):

- :mod:`aipg.testing.world`: a signed pouw world (gateway, worker, validators) and the
  builders of every record of one job's life;
- :mod:`aipg.testing.models`: the demo models' fraud variants and honest configurations;
- :mod:`aipg.testing.diffusers_exports`: tiny diffusers ONNX exports (SD 1.x/2.x, SDXL) with
  diffusers' I/O names, a tiny CLIP BPE and OpenAI's CLIP BPE algorithm to check against;
- :mod:`aipg.testing.diffusers_reference`: diffusers' scheduler and pipeline math in numpy;
- :mod:`aipg.testing.hf_exports`: Hugging Face optimum-style LLM exports (every decoder
  layout, a trained byte-level BPE or sentencepiece, Llama-2 / ChatML chat templates);
- :mod:`aipg.testing.fraud_matrix`: randomized honest and cheating workers against the
  verifiers;
- :mod:`aipg.testing.chainkit`: a small chain of validators and users that appends
  committed blocks, and certificates for its blocks;
- :mod:`aipg.testing.gossipkit`: start gossip hosts, wire topologies, wait on events;
- :mod:`aipg.testing.strategies`: hypothesis strategies for every record type (the only
  module that needs the ``dev`` extra).

The package is installed with the node, but nothing in the node imports it: arrows point
from here down to stake, pouw, models, gossip and wire, never back.
"""
