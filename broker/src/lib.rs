//! `warren-broker`: the AMQP 0-9-1 codec, connection and channel state machines, exchanges,
//! queues and consumers, vhosts and users, the admin gRPC service, and the `warren` and
//! `warrenctl` binaries.
//!
//! The AMQP server arrives with the single-node broker issue; until then the `warren` binary
//! says so and exits.
