"""DP training and evaluation jobs: requests, the runner that drives phase B, and the release gate."""
