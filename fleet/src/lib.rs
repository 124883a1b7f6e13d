//! A Flotilla fleet started inside one process, for the loadgen's `--local`, the examples and the
//! tests: nats-server (alone or a cluster of three, from `flotilla-natsd`, re-exported here); the
//! shard count agreed; the gateway and workers run through their libraries on
//! 127.0.0.1 port 0. Every failure to start is an error the caller decides about; nothing here
//! panics.

mod error;
mod fleet;
mod process;

pub use error::{FleetError, ProbeError};
pub use fleet::{Fleet, FleetOptions, WorkerSpec};
pub use flotilla_natsd::{NatsCluster, NatsError, NatsServer, connect_ready, nats_server_bin};
pub use process::{Gateway, GatewayService, InProcess, Service, Worker, WorkerService};
