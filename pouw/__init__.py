"""aipg.pouw."""
