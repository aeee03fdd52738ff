"""Runnable comparisons of resilientdb against raw drivers and peer libraries."""
