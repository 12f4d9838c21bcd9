"""chordcdn's command line, churn simulator and benchmarks."""
