"""aipg.node."""
