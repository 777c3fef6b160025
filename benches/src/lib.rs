//! `warren-benches`: criterion micro-benchmarks (`benches/benches/`) and, with the benchmark
//! issue, the `warren-perf` load generator.
