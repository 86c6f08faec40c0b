"""Representations of symmetric tensors (design §5): diagonal slices and harmonic pieces."""
