"""pallas_cpu's benchmark suite (``python benchmarks/bench.py``); see
README.md here for the layout and how to add a case."""
