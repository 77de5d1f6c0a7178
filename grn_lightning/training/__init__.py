"""Training utilities shared by every stage: EMA of weights, optimiser param groups, LR schedules."""
