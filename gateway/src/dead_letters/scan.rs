//! Reading dead letters in sequence order without their bodies: the list shows what a scan finds,
//! and a replay by function (or of all) replays it.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use futures_util::StreamExt;

use super::common::unavailable;
use crate::error::CallError;

/// Letters fetched per pull request while scanning.
const SCAN_BATCH: usize = 1000;
/// A scan deletes its consumer when done; should the gateway die first, JetStream drops the
/// consumer after this much inactivity.
const SCAN_INACTIVE: Duration = Duration::from_secs(30);

/// A dead letter's headers as a headers-only delivery carries them.
#[derive(Debug)]
pub(super) struct Letter {
    pub(super) sequence: u64,
    pub(super) subject: String,
    pub(super) headers: HeaderMap,
}

impl Letter {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    pub(super) fn parsed<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.header(name).and_then(|v| v.parse().ok())
    }
}

#[derive(Debug)]
pub(super) struct Scan {
    pub(super) letters: Vec<Letter>,
    /// True when letters matching the filter remain after the last one returned.
    more: bool,
}

impl Scan {
    /// The cursor to continue from, when there is more.
    pub(super) fn next(&self) -> Option<u64> {
        self.letters
            .last()
            .filter(|_| self.more)
            .map(|l| l.sequence)
    }
}

/// Up to `max` letters on `filter` with a sequence above `after`, oldest first. An ephemeral
/// consumer starting at `after + 1` delivers only headers (JetStream adds the body size), in
/// batches: a page costs a few JetStream requests whatever the stream's size, and bodies never
/// travel.
pub(super) async fn scan(
    stream: &JsStream,
    filter: &str,
    after: u64,
    max: usize,
) -> Result<Scan, CallError> {
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            ack_policy: AckPolicy::None,
            headers_only: true,
            memory_storage: true,
            inactive_threshold: SCAN_INACTIVE,
            description: Some("flotilla-gateway dead-letter scan".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("reading dead letters", e))?;
    let name = consumer.cached_info().name.clone();
    let result = read_scan(&consumer, max).await;
    if let Err(error) = stream.delete_consumer(&name).await {
        tracing::debug!(%error, consumer = %name, "scan consumer not deleted; it expires on its own");
    }
    result
}

async fn read_scan(consumer: &PullConsumer, max: usize) -> Result<Scan, CallError> {
    let mut pending = consumer.cached_info().num_pending;
    let mut letters = Vec::new();
    while letters.len() < max && pending > 0 {
        let want = (max - letters.len()).min(SCAN_BATCH);
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(|e| unavailable("reading dead letters", e))?;
        let before = letters.len();
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| unavailable("reading dead letters", e))?;
            let info = msg
                .info()
                .map_err(|e| unavailable("reading dead letters", e))?;
            pending = info.pending;
            let sequence = info.stream_sequence;
            let (msg, _) = msg.split();
            letters.push(Letter {
                sequence,
                subject: msg.subject.to_string(),
                headers: msg.headers.unwrap_or_default(),
            });
        }
        if letters.len() == before {
            // Nothing available although some was pending: deleted meanwhile.
            pending = 0;
        }
    }
    Ok(Scan {
        letters,
        more: pending > 0,
    })
}
