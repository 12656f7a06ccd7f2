"""Tests of pure functions, no process and no Redis: laid out as app/ and worker/ are."""
