"""Benchmarks that print their figures and save them as JSON under `bench/results/`.

Each benchmark is a module `bench/bench_<name>.py` with `main(argv) -> int` that accepts
`--out PATH` (where to write its JSON). `python -m bench.run_all` (what `make bench` calls) runs
every one of them, each in its own process, and prints where the JSON went. See
`docs/benchmarks.md` for what each one measures and the latest figures.
"""
