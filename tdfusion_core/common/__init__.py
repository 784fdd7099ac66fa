"""Layer 0: helpers for every layer: image I/O, colour, sizes, atomic saves, devices, .pt files, seeding.

Modules here import their own layer and those below it, never one above (docs/architecture.md,
tests/test_module_graph.py). Nothing is re-exported here: the short public API is ``tdfusion_core`` itself,
and importing this package costs nothing.
"""
