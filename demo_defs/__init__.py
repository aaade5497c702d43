"""The demo's `dg` defs folder: component instances defined in YAML (loaded by definitions.py)."""
