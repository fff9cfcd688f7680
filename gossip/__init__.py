"""aipg.gossip."""
