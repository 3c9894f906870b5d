"""Data sources (download) and record parsing (clean)."""
