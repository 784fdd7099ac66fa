"""Metrics: fusion quality (image statistics) and task quality (segmentation, detection)."""
