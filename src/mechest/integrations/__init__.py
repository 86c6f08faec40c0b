"""Integrations with other systems: the WhestBench entry and Dask clusters."""
