"""Layer 5: the k-fold runner (`runner`), a member's run directory and its content fingerprints
(`rundir`), and the extra training rows folds take (`extra`).
"""
