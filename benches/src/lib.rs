//! `warren-benches`: criterion micro-benchmarks (`benches/benches/`) and the `warren-perf` load
//! generator ([`perf`]), which speaks AMQP 0-9-1 to any broker (Warren or RabbitMQ) through
//! Warren's own codec, so the client costs little CPU next to the broker it measures; and the
//! machine's own floor for a lone persistent message ([`floor`]), which `warren-compare` reports
//! beside its table.

pub mod floor;
pub mod perf;
