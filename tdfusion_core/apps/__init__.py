"""Layer 3: what a user runs, as functions: fuse, evaluate, downstream, experiment, demo, bench.

Modules here import their own layer and those below it, never one above (docs/architecture.md,
tests/test_module_graph.py). Nothing is re-exported here: the short public API is ``tdfusion_core`` itself,
and importing this package costs nothing.
"""
