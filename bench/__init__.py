"""Benchmarks that print figures (docs/benchmarks.md); run each as a script."""
