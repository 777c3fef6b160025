//! The Warren broker: AMQP 0-9-1 in front of the storage engine.
//!
//! - [`amqp`]: the wire codec (frames, methods, field tables, properties); pure.
pub mod amqp;
