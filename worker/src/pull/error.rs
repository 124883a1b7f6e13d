//! Why a pull loop (a wait loop or a shard's dispatch loop) ended, with NATS's own error as the
//! cause. Invariant: `is_retryable` is exhaustive, so a new variant must be classified.

use async_nats::jetstream::consumer::pull::BatchRequestError;
use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, ConsumersError};

/// Why one pull loop ended; its supervisor restarts it when the function or shard still has work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    /// NATS did not create the consumer.
    #[error("creating consumer {consumer}: {source}")]
    Create {
        consumer: String,
        #[source]
        source: ConsumerError,
    },
    /// The stream the consumer belongs on could not be read.
    #[error("creating consumer {consumer}: {source}")]
    Stream {
        consumer: String,
        #[source]
        source: GetStreamError,
    },
    /// The stream's consumers could not be listed (to find those of the earlier layout).
    #[error("creating consumer {consumer}: {source}")]
    ListConsumers {
        consumer: String,
        #[source]
        source: ConsumersError,
    },
    /// A consumer of the earlier layout, which would overlap the new one, could not be removed.
    #[error("creating consumer {consumer}: removing consumer {earlier}: {source}")]
    RemoveEarlier {
        consumer: String,
        earlier: String,
        #[source]
        source: ConsumerError,
    },
    #[error("subscribing to the pull inbox: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("the consumer was deleted on the server")]
    ConsumerDeleted,
    #[error("pull subscription closed")]
    Closed,
    #[error("pull request failed: {0}")]
    Request(#[source] BatchRequestError),
}

impl PullError {
    /// Whether restarting the loop may help: NATS may come back and a deleted consumer is
    /// recreated on the next start, but a consumer configuration the server refused stays
    /// refused (an operator must act, for example raise the account's consumer limit).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Create { source, .. } => {
                !matches!(source.kind(), ConsumerErrorKind::JetStream(_))
            }
            Self::Stream { .. }
            | Self::ListConsumers { .. }
            | Self::RemoveEarlier { .. }
            | Self::Subscribe(_)
            | Self::ConsumerDeleted
            | Self::Closed
            | Self::Request(_) => true,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::error::Error as _;

    use async_nats::jetstream::stream::ConsumerError;

    use super::*;

    /// The server's refusal of a consumer configuration.
    pub(crate) fn refused() -> PullError {
        let api: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":400,"err_code":10026,"description":"maximum consumers limit reached"}"#,
        )
        .unwrap();
        PullError::Create {
            consumer: "c".into(),
            source: ConsumerError::new(ConsumerErrorKind::JetStream(api)),
        }
    }

    #[test]
    fn a_refused_consumer_is_not_retried_soon_and_keeps_its_cause() {
        let e = refused();
        assert!(!e.is_retryable());
        assert!(e.to_string().starts_with("creating consumer c: "));
        assert!(e.source().is_some());
        let timed_out = PullError::Create {
            consumer: "c".into(),
            source: ConsumerError::new(ConsumerErrorKind::TimedOut),
        };
        assert!(timed_out.is_retryable());
        assert!(PullError::Closed.is_retryable());
    }
}
