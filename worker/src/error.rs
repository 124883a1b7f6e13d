//! The worker's errors, classified so callers know whether to fix configuration or wait:
//! `WorkerError::is_config` maps to exit status 64 (else 1). A pull loop's errors, and whether
//! restarting it may help, are `pull::PullError`.

use flotilla_queue::{PolicyError, TopologyError};

/// Why `run` stopped. The worker waits out everything that may pass by itself (NATS unreachable
/// or not ready at start, a failed pull or retry loop, a full callback queue), so an error that
/// ends `run` is one an operator must fix: in the configuration (exit 64) or, for `Start`, in
/// the worker or its surroundings (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad flags, or served shards outside the agreed topology.
    #[error("{0}")]
    Config(String),
    /// The NATS flags cannot form a client (a URL, credentials or TLS files it cannot use).
    #[error(transparent)]
    Nats(#[from] flotilla_runtime::NatsConnectError),
    /// The function TLS flags name files that cannot be used.
    #[error(transparent)]
    FunctionTls(#[from] flotilla_runtime::FunctionTlsError),
    /// The policy file cannot be read or holds an invalid policy.
    #[error("{0}")]
    Policy(#[source] PolicyError),
    /// A callback signing secrets file cannot be read or holds no usable secret.
    #[error(transparent)]
    Secrets(#[from] crate::signing::SecretsFileError),
    /// A `--callback-allow` or `--callback-deny` rule cannot be read.
    #[error(transparent)]
    CallbackTargets(#[from] flotilla_runtime::RuleError),
    /// The NATS client could not be created: a `--nats-url` it cannot use (checked already by
    /// `Config::check`), never an unreachable server (the client keeps trying to connect in the
    /// background).
    #[error("--nats-url {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// NATS holds a topology this worker cannot serve: another shard count than `--shards`, or
    /// an unreadable one.
    #[error("{0}")]
    Topology(#[from] TopologyError),
    /// A start-up step failed for a reason that is neither the configuration nor NATS being away
    /// (those are waited out): `what` names the step.
    #[error("{what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl WorkerError {
    /// True for configuration errors (exit status 64); false for the rest (exit status 1).
    /// Exhaustive, so a new variant must be classified here.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Config(_)
            | Self::Nats(_)
            | Self::FunctionTls(_)
            | Self::Policy(_)
            | Self::Secrets(_)
            | Self::CallbackTargets(_)
            | Self::Connect { .. }
            | Self::Topology(_) => true,
            Self::Start { .. } => false,
        }
    }
}
