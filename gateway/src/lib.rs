//! Flotilla's HTTP gateway: forwards synchronous calls to functions and enqueues asynchronous ones
//! into the JetStream shard streams, answering 202 only once JetStream holds the call. The binary
//! in `main.rs` is a thin shell around `run`.

mod accept;
mod auth;
mod batch;
mod body;
mod callback_guard;
mod config;
mod console;
mod dead_letters;
mod enqueue;
mod error;
mod forward;
mod hot;
mod limits;
mod metrics;
mod queues;
mod request;
mod routes;
mod server;
mod state;
mod status;
mod system;
mod times;
mod topology;

pub use config::{Config, ConfigError, ValidConfig};
pub use error::{CallError, GatewayError, Side};
pub use server::{run, serve};

/// Names of the gateway's Prometheus metrics, for dashboards and tests.
pub mod metric_names {
    pub use crate::metrics::{
        CANCELS, DEAD_LETTER_REPLAYS, DUPLICATES, ENQUEUE_SECONDS, ERRORS, FUNCTION_SECONDS,
        INVOCATIONS, NATS_CONNECTED, STATUS_WRITE_FAILURES, TOPOLOGY_SHARDS,
    };
}
