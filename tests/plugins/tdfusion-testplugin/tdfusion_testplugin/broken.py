"""A plugin whose import fails, to test that one broken plugin does not break the others."""

raise ImportError("this test plugin is broken on purpose")
