//! Function discovery, one supervisor per served shard: which functions need a pull loop, found
//! without a restart from the policy file, the stream's existing consumers, and the subjects that
//! hold messages (polled every `--discovery-interval`). It restarts failed loops and lets idle
//! ones go.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{ConsumersError, InfoError, Stream as JsStream};
use flotilla_queue::{FunctionName, subjects};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::PullError;
use crate::pull::{self, Ended, FunctionRt};
use crate::{Shared, dead};

/// Wait before restarting a pull loop that failed with a retryable error.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// Wait before retrying a consumer that NATS refused (an operator must act first).
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often a replica announces that it serves a shard.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// A replica not heard from for this long (three missed heartbeats and a half) no longer counts.
const PRESENCE_EXPIRY: Duration = Duration::from_millis(3500);

/// Why one discovery pass failed; the next pass asks the stream again.
#[derive(Debug, thiserror::Error)]
enum DiscoveryError {
    #[error("reading the shard's stream: {0}")]
    Stream(#[source] GetStreamError),
    #[error("listing the shard's consumers: {0}")]
    Consumers(#[source] ConsumersError),
    #[error("listing the subjects that hold messages: {0}")]
    Subjects(#[source] InfoError),
}

/// Discovers and supervises the pull loops of one shard until the worker stops.
pub(crate) async fn supervise(shared: Arc<Shared>, shard: u32) {
    let map = shared.shard_map;
    let pinned: Vec<FunctionName> = shared
        .policies
        .configured()
        .map(|(f, _)| f.clone())
        .filter(|f| map.shard_of(f.as_str()) == shard)
        .collect();
    let stream_name = subjects::call_stream(shard);
    let wildcard = subjects::shard_wildcard(shard);
    let mut stream: Option<JsStream> = None;
    let mut running: HashMap<FunctionName, JoinHandle<Result<Ended, PullError>>> = HashMap::new();
    let mut not_before: HashMap<FunctionName, Instant> = HashMap::new();
    let mut consumers_listed = false;
    let mut first_pass = true;
    let mut healthy = true;
    let mut tick = tokio::time::interval(shared.discovery_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (replicas_tx, replicas) = watch::channel(1u32);
    let presence_task = shared
        .tracker
        .spawn(presence(shared.clone(), shard, replicas_tx));

    loop {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        reap(&shared, &mut running, &mut not_before, shard).await;

        let mut wanted: Vec<FunctionName> = pinned.clone();
        let found = async {
            let s = match stream.take() {
                Some(s) => s,
                None => shared
                    .js
                    .get_stream(stream_name.as_str())
                    .await
                    .map_err(DiscoveryError::Stream)?,
            };
            let s = &*stream.insert(s);
            if !consumers_listed {
                // Consumers that exist already may hold calls delivered to a replica that died.
                let mut list = s.consumers();
                while let Some(info) = list.try_next().await.map_err(DiscoveryError::Consumers)? {
                    if let Some(f) =
                        subjects::function_of_subject(shard, &info.config.filter_subject)
                    {
                        wanted.push(f);
                    }
                }
                consumers_listed = true;
            }
            let mut subjects_info = s
                .info_with_subjects(wildcard.as_str())
                .await
                .map_err(DiscoveryError::Subjects)?;
            let mut poison = Vec::new();
            while let Some(entry) = subjects_info.next().await {
                let (subject, count) = entry.map_err(DiscoveryError::Subjects)?;
                if count == 0 {
                    continue;
                }
                match subjects::function_of_subject(shard, &subject) {
                    Some(f) => wanted.push(f),
                    None => poison.push(subject),
                }
            }
            Ok::<_, DiscoveryError>(poison)
        }
        .await;
        match found {
            Ok(poison) => {
                if !healthy {
                    tracing::info!(shard, "discovery works again");
                    healthy = true;
                }
                for subject in poison {
                    if let Some(s) = &stream {
                        dead::poison_subject(&shared, s, shard, &subject).await;
                    }
                }
            }
            Err(error) => {
                stream = None;
                if healthy {
                    tracing::warn!(shard, %error, "discovery failed; retrying");
                    healthy = false;
                }
            }
        }

        let now = Instant::now();
        for f in wanted {
            if running.contains_key(&f) || not_before.get(&f).is_some_and(|t| *t > now) {
                continue;
            }
            let pinned_fn = pinned.contains(&f);
            let rt = Arc::new(FunctionRt::new(
                f.clone(),
                shard,
                &shared.policies,
                pinned_fn,
                replicas.clone(),
            ));
            let handle = shared.tracker.spawn(pull::run(shared.clone(), rt));
            running.insert(f, handle);
            shared.metrics.consumers.increment(1.0);
        }
        if first_pass && healthy {
            first_pass = false;
            shared.ready.shards_ready.fetch_add(1, Ordering::SeqCst);
        }
    }
    // The pull loops see the same stop signal; wait for them so the pending gauges settle.
    for (_, handle) in running.drain() {
        let _ = handle.await;
        shared.metrics.consumers.decrement(1.0);
    }
    let _ = presence_task.await;
}

/// The shard's presence heartbeat: announces this replica every `PRESENCE_EVERY` and counts the
/// replicas heard from within `PRESENCE_EXPIRY`, itself included, into `count`. A replica says
/// `hello` when it starts (the others answer at once, so it knows them within a round trip) and
/// `bye` when it stops pulling (the others take over its share at once). One that dies silently
/// drops out after `PRESENCE_EXPIRY`. No other coordination between replicas exists.
async fn presence(shared: Arc<Shared>, shard: u32, count: watch::Sender<u32>) {
    let subject = subjects::presence_subject(shard);
    // Unique per connection, hence per replica and shard.
    let me = shared.client.new_inbox();
    let announce = |kind: &str| {
        let (client, subject, body) = (
            shared.client.clone(),
            subject.clone(),
            format!("{kind} {me}"),
        );
        async move {
            if let Err(error) = client.publish(subject, body.into()).await {
                tracing::debug!(%error, "presence heartbeat not sent");
            }
        }
    };
    let mut sub = match shared.client.subscribe(subject.clone()).await {
        Ok(sub) => sub,
        Err(error) => {
            tracing::warn!(shard, %error, "no presence heartbeat: rates are not split among replicas");
            return;
        }
    };
    announce("hello").await;
    let mut others: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            m = sub.next() => {
                let Some(m) = m else { break };
                let Some((kind, who)) = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|t| t.split_once(' '))
                else {
                    continue;
                };
                if who == me {
                    continue;
                }
                match kind {
                    "bye" => {
                        others.remove(who);
                    }
                    "hello" => {
                        others.insert(who.to_owned(), Instant::now());
                        announce("beat").await;
                    }
                    _ => {
                        others.insert(who.to_owned(), Instant::now());
                    }
                }
            }
            _ = tick.tick() => {
                announce("beat").await;
                others.retain(|_, seen| seen.elapsed() < PRESENCE_EXPIRY);
            }
        }
        let n = u32::try_from(others.len() + 1).unwrap_or(u32::MAX);
        count.send_if_modified(|c| {
            let changed = *c != n;
            if changed {
                tracing::debug!(shard, replicas = n, "replicas of the shard");
                *c = n;
            }
            changed
        });
    }
    announce("bye").await;
    let _ = sub.unsubscribe().await;
}

/// Collects finished pull loops, logging why they ended and when they may start again.
async fn reap(
    shared: &Shared,
    running: &mut HashMap<FunctionName, JoinHandle<Result<Ended, PullError>>>,
    not_before: &mut HashMap<FunctionName, Instant>,
    shard: u32,
) {
    let done: Vec<FunctionName> = running
        .iter()
        .filter(|(_, h)| h.is_finished())
        .map(|(f, _)| f.clone())
        .collect();
    for f in done {
        let Some(handle) = running.remove(&f) else {
            continue;
        };
        shared.metrics.consumers.decrement(1.0);
        match handle.await {
            Ok(Ok(Ended::Idle)) => {
                tracing::debug!(function = %f, shard, "function idle; released its consumer");
            }
            Ok(Ok(Ended::Stopped)) => {}
            Ok(Err(error)) if error.is_retryable() => {
                tracing::warn!(function = %f, shard, %error, "pull loop failed; restarting");
                not_before.insert(f, Instant::now() + RESTART_AFTER);
            }
            Ok(Err(error)) => {
                tracing::error!(function = %f, shard, %error, "NATS refused the function's consumer");
                not_before.insert(f, Instant::now() + REFUSED_RETRY_AFTER);
            }
            Err(error) => {
                tracing::error!(function = %f, shard, %error, "pull loop panicked; restarting");
                not_before.insert(f, Instant::now() + RESTART_AFTER);
            }
        }
    }
}
