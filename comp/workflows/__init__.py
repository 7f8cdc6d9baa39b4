"""Layer 10: multi-step work over members: the budget planner (`plan`), the `comp run` pipeline
(`pipeline`), Optuna tuning (`tune`), pseudo-label rounds (`pseudo`) and distillation teachers
(`distill`).
"""
