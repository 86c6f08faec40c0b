"""mechest: mechanistic estimation of the expected output of random MLPs."""
