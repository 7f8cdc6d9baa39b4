"""Layer 4: what depends on the task shape: per-label thresholds of multi-label tasks
(`thresholds`).
"""
