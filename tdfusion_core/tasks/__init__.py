"""Built-in task implementations (no external framework needed)."""
