"""Synthetic CRM data: the seeded generator and nightly inputs with late rows."""
