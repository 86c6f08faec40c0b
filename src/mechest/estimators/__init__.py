"""Estimators built on the engine: estimate (kprop and Monte Carlo), budgets, truths and scores, tails and
their importance-sampling check, distillation's expected loss."""
