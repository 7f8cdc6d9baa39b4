"""Layer 1, what every other layer uses: errors, atomic file writes, logging and progress
bars, seeding, hashing (`utils`), and the metric registry (`metrics`).
"""
