"""Benchmarks: run as scripts (``make bench``), never collected as tests."""
