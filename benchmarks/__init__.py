"""`make bench`: Courier's benchmark suite (not part of the test suite).

Every figure is a ratio against a baseline measured in the same run, because the machine is
shared and noisy: absolute numbers move between runs, ratios much less.
"""
