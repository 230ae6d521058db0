"""Pandera models: one per table read or written."""
