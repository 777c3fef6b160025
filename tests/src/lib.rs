//! `warren-tests`: end-to-end tests against real `warren` processes with real AMQP clients.
//!
//! The storage engine's own crash tests (a child process SIGKILLed mid-append) live beside the
//! engine in `storage/tests/`; this crate gains its suites with the broker issue.
