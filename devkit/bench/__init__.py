"""Benchmarks (``streetlight bench NAME``): each prints one JSON object as its last stdout line."""
