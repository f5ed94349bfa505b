"""Benchmarks: each path of echo_lab beside the raw library doing the same work, same run."""
