"""SpikeKD's benchmarks: `pytest bench --benchmark-only`, `python -m bench.report`, `bench/gpu.sh` (see README.md)."""
