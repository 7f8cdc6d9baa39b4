"""Layer 11: predicting texts the run never saw: `comp.load` and `comp predict` (`predictor`),
`comp export` bundles (`bundle`).
"""
