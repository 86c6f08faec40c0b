"""WhestBench entry: mechest's cumulant propagation as a FLOP-metered WhestBench estimator."""
