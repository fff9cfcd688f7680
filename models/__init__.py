"""aipg.models."""
