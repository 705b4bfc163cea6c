"""sealtree benchmark suite: ``python3 -m bench.run [--quick] [--out DIR]`` (see bench/README.md)."""
