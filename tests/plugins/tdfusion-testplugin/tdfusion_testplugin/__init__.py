"""Test plugin for tdfusion-core's plugin-discovery tests."""
