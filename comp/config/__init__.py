"""Layer 2: the recipe schema, frozen dataclasses with their validation and TOML dumping
(`schema`). Resolving a recipe against a competition folder lives in `comp.data.recipes`.
"""
