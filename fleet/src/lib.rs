//! A Flotilla fleet started inside one process, for the loadgen's `--local`, the examples and the
//! tests: nats-server (alone or a cluster of three) on ports it picks itself, with a temporary
//! store. Every failure to start is an error the caller decides about; nothing here panics.

mod nats;

pub use nats::{NatsCluster, NatsError, NatsServer, connect_ready, nats_server_bin};
