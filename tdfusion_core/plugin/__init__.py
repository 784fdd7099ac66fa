"""Layer 1: the plugin system: hook specs, plugin manager, registries, built-in registrations.

Modules here import their own layer and those below it, never one above (docs/architecture.md,
tests/test_module_graph.py). Nothing is re-exported here: the short public API is ``tdfusion_core`` itself,
and importing this package costs nothing.
"""
