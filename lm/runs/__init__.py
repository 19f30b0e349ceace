"""Many runs: sweeps and studies (a graph of runs), their statistics and reports."""
