//! The AMQP 0-9-1 codec: pure functions from bytes to frames and methods and back, with no I/O.
//!
//! - [`wire`]: the primitive types (`octet` … `longlong`, bits packed eight to an octet, short and
//!   long strings) and the cursor types that read and write them.
//! - [`field`]: field tables and arrays with RabbitMQ's type codes (DESIGN §7).
//! - [`method`]: every method of the connection, channel, exchange, queue, basic, confirm and tx
//!   classes, RabbitMQ's extensions included.
//! - [`properties`]: the basic class's content header properties.
//! - [`frame`]: framing (method, header, body, heartbeat) bounded by the negotiated `frame_max`.
//! - [`constants`]: reply codes and protocol constants.
//!
//! Decoding takes a [`bytes::Bytes`] and hands out slices of it (strings, bodies), so a publish is
//! parsed without copying its payload.

pub mod constants;
pub mod field;
pub mod frame;
pub mod fuzz;
pub mod method;
pub mod properties;
pub mod wire;

pub use field::{FieldTable, FieldValue};
pub use method::Method;
pub use properties::BasicProperties;
pub use wire::{CodecError, ShortStr};

#[cfg(test)]
mod arbitrary;
#[cfg(test)]
mod tests;
