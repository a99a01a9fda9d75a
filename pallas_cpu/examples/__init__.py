"""Pallas TPU kernels written in this project's own words, run by the tests
and the benchmarks on every backend: ``collectives`` holds the remote-DMA
kernels of the Pallas TPU distributed guide (right permute, ring
all-gather, all-reduce, reduce-scatter with and without emit_pipeline).
Nothing in the compiler imports them."""
