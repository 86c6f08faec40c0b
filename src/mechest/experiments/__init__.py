"""Experiments and training: the MSE-vs-compute benchmark, the tail benchmark, distillation training,
suppressing a rare event, their plots, the demo."""
