"""The mathematics below the engine: Gaussian integrals, Wick coefficients, combinatorics of diagrams,
symmetric-tensor representations. No module here imports anything above it."""
