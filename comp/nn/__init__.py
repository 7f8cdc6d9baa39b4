"""Layer 6: the neural side. Backbones and their import (`backbones`), word vectors, the grid
(`align`), heads, losses, the fusion network (`fusion`), rows and batching (`rows`),
optimisation pieces (`optim`), AMP/DDP (`distributed`), the fit loop and fusion member
(`trainer`), in-task pretraining (`pretrain`) and serving trained folds (`serving`).
"""
