//! The worker's errors, classified so callers know whether to fix configuration, wait, or
//! report a bug: `is_config` maps to exit status 64, `is_retryable` to "try again later".

/// Why `run` stopped, or why a part of the worker failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad flags, a bad policy file, or a shard layout that disagrees with NATS (including
    /// `Topology::agree`'s shard-count mismatch). An operator must act; the binary exits 64.
    #[error("{0}")]
    Config(String),
    /// NATS refused or failed a request that the worker cannot do without.
    #[error("NATS: {0}")]
    Nats(String),
    /// The admin server could not serve on its listener.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
}

impl WorkerError {
    /// True for configuration errors (exit status 64).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }

    /// True when the same operation may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Nats(_))
    }
}

/// Why one pull loop ended; its supervisor restarts it when the function still has work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    #[error("creating consumer {consumer}: {message}")]
    Create {
        consumer: String,
        message: String,
        /// False when the server refused the consumer's configuration (an operator must act,
        /// for example raise the account's consumer limit).
        retryable: bool,
    },
    #[error("subscribing to the pull inbox: {0}")]
    Subscribe(String),
    #[error("the consumer was deleted on the server")]
    ConsumerDeleted,
    #[error("pull subscription closed")]
    Closed,
    #[error("pull request failed: {0}")]
    Request(String),
}

impl PullError {
    /// Whether restarting the loop may help: NATS may come back and a deleted consumer is
    /// recreated on the next start, but a refused configuration stays refused.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Create { retryable, .. } => *retryable,
            _ => true,
        }
    }
}
