"""aipg.stake."""
