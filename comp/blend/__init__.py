"""Layer 8: from members to submissions: blenders (`blenders`), per-class biases (`bias`),
ensembling with nested CV (`ensemble`) and the submission file (`submit`).
"""
