"""Evaluation: metrics, re-ranking, feature passes, rank pictures and the test scripts' command line."""
