//! Why a fleet, or one process of it, could not start, became not ready or did not stop.

use std::time::Duration;

use flotilla_natsd::NatsError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("{which} configuration: {source}")]
    Config {
        which: &'static str,
        #[source]
        source: clap::Error,
    },
    #[error("cannot bind a local port: {0}")]
    Bind(#[source] std::io::Error),
    #[error("{url} is not a valid URI: {source}")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("cannot agree the topology: {0}")]
    Topology(#[from] flotilla_queue::TopologyError),
    #[error("{which} did not become ready within {within:?}: {last}")]
    NotReady {
        which: String,
        within: Duration,
        #[source]
        last: ProbeError,
    },
    /// `run` returned an error (a bad configuration, NATS unreachable, a topology mismatch…).
    #[error("{which} stopped: {source}")]
    Failed {
        which: String,
        #[source]
        source: BoxError,
    },
    #[error("{which} returned without being asked to")]
    Returned { which: String },
    #[error("{which} panicked: {source}")]
    Panicked {
        which: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{which} did not stop within {within:?}")]
    StopTimeout { which: String, within: Duration },
    #[error("{which} has already been waited for")]
    Joined { which: String },
}

/// The last answer of a readiness probe (`GET /readyz`) that was not 200.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("/readyz answered {0}")]
    Status(http::StatusCode),
    #[error("/readyz unreachable: {0}")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    #[error("/readyz did not answer within {0:?}")]
    Silent(Duration),
}
