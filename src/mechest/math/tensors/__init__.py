"""Representations of symmetric tensors (docs/method.md §3): diagonal slices and harmonic pieces."""
