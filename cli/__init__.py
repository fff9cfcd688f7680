"""aipg.cli."""
