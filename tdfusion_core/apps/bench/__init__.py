"""Benchmarks behind ``tdfusion bench``: one module per benchmark (:mod:`tdfusion_core.apps.bench.fuse`, ...)."""
