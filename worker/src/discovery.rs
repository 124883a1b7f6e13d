//! One supervisor per served shard: it prepares and runs the shard's dispatch loop, and runs a
//! wait loop for each function whose calls wait in the shard's wait stream, found when the
//! dispatch loop moves a call there and, for calls left by other replicas, from the subjects of
//! the wait stream that hold messages (polled every `--discovery-interval`). It restarts failed
//! loops, and keeps each function's concurrency split among the shard's replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{InfoError, Stream as JsStream};
use flotilla_queue::{FunctionName, limits, subjects};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Shared;
use crate::dispatch;
use crate::error::PullError;
use crate::functions::{FunctionRt, Functions, Membership};
use crate::pull::{self, Ended};

/// Wait before restarting a loop that failed with a retryable error.
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
    #[error("reading the shard's wait stream: {0}")]
    Stream(#[source] GetStreamError),
    #[error("listing the subjects that hold messages: {0}")]
    Subjects(#[source] InfoError),
}

type Loop = JoinHandle<Result<Ended, PullError>>;

/// Runs one shard's dispatch and wait loops until the worker stops.
pub(crate) async fn supervise(shared: Arc<Shared>, shard: u32) {
    let (membership_tx, mut membership) = watch::channel(Membership::ALONE);
    let presence_task = shared
        .tracker
        .spawn(presence(shared.clone(), shard, membership_tx));
    let functions = Arc::new(Functions::new(
        shard,
        shared.budget.clone(),
        membership.clone(),
    ));
    let limits_task = shared
        .tracker
        .spawn(report_limits(shared.clone(), shard, functions.clone()));
    let (waiting_tx, mut waiting_rx) = mpsc::unbounded_channel::<Arc<FunctionRt>>();

    let mut dispatch: Option<JoinHandle<Result<(), PullError>>> = None;
    let mut dispatch_not_before = Instant::now();
    let mut ready = false;
    let mut wait_stream: Option<JsStream> = None;
    let mut running: HashMap<FunctionName, Loop> = HashMap::new();
    let mut not_before: HashMap<FunctionName, Instant> = HashMap::new();
    let mut healthy = true;
    let mut tick = tokio::time::interval(shared.discovery_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            Some(f) = waiting_rx.recv() => {
                start_wait_loop(&shared, &mut running, &not_before, f);
                continue;
            }
            changed = membership.changed() => {
                if changed.is_ok() {
                    let m = *membership.borrow_and_update();
                    functions.rebalance(m);
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        reap(&shared, &mut running, &mut not_before, shard).await;

        // The dispatch loop: prepared once, restarted when it fails.
        if dispatch.as_ref().is_none_or(JoinHandle::is_finished)
            && Instant::now() >= dispatch_not_before
        {
            if let Some(handle) = dispatch.take() {
                match handle.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(shard, %error, "dispatch loop failed; restarting")
                    }
                    Err(error) => {
                        tracing::error!(shard, %error, "dispatch loop panicked; restarting")
                    }
                }
            }
            match dispatch::prepare(&shared, shard).await {
                Ok(consumer) => {
                    dispatch = Some(shared.tracker.spawn(dispatch::run(
                        shared.clone(),
                        shard,
                        consumer,
                        functions.clone(),
                        waiting_tx.clone(),
                    )));
                    if !ready {
                        ready = true;
                        shared.ready.shards_ready.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(error) => {
                    let retryable = error.is_retryable();
                    if retryable {
                        tracing::warn!(shard, %error, "cannot dispatch the shard's calls yet; retrying");
                    } else {
                        tracing::error!(shard, %error, "NATS refused the shard's dispatch consumer");
                    }
                    dispatch_not_before = Instant::now()
                        + if retryable {
                            RESTART_AFTER
                        } else {
                            REFUSED_RETRY_AFTER
                        };
                }
            }
        }

        // Calls waiting in the wait stream, whoever moved them there.
        let found = async {
            let s = match wait_stream.take() {
                Some(s) => s,
                None => shared
                    .js
                    .get_stream(subjects::wait_stream(shard))
                    .await
                    .map_err(DiscoveryError::Stream)?,
            };
            let s = &*wait_stream.insert(s);
            let mut subjects_info = s
                .info_with_subjects(subjects::wait_wildcard(shard))
                .await
                .map_err(DiscoveryError::Subjects)?;
            let mut found = Vec::new();
            while let Some(entry) = subjects_info.next().await {
                let (subject, count) = entry.map_err(DiscoveryError::Subjects)?;
                if count > 0
                    && let Some(f) = subjects::function_of_wait_subject(shard, &subject)
                {
                    found.push(f);
                }
            }
            Ok::<_, DiscoveryError>(found)
        }
        .await;
        match found {
            Ok(found) => {
                if !healthy {
                    tracing::info!(shard, "discovery works again");
                    healthy = true;
                }
                for name in found {
                    if !running.contains_key(&name) {
                        let f = functions.get(&name, &shared.policies);
                        start_wait_loop(&shared, &mut running, &not_before, f);
                    }
                }
            }
            Err(error) => {
                wait_stream = None;
                if healthy {
                    tracing::warn!(shard, %error, "discovery failed; retrying");
                    healthy = false;
                }
            }
        }
    }
    // The loops see the same stop signal; wait for them so the pending gauges settle.
    if let Some(handle) = dispatch {
        let _ = handle.await;
    }
    for (_, handle) in running.drain() {
        let _ = handle.await;
        shared.metrics.consumers.decrement(1.0);
    }
    let _ = presence_task.await;
    let _ = limits_task.await;
}

/// Reports the concurrency limits of the shard's functions in this replica every
/// [`limits::REPORT_EVERY`], for the gateway's `/system/queues`. Fire and forget: a lost report
/// only leaves the gateway with the previous one for a while.
async fn report_limits(shared: Arc<Shared>, shard: u32, functions: Arc<Functions>) {
    let subject = subjects::limits_subject(shard);
    let replica = shared.client.new_inbox();
    let mut tick = tokio::time::interval(limits::REPORT_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = limits::LimitReport {
            replica: replica.clone(),
            functions: functions.limits(),
        };
        if report.functions.is_empty() {
            continue;
        }
        let body = report.encode();
        if let Err(error) = shared.client.publish(subject.clone(), body.into()).await {
            tracing::debug!(%error, "limit report not sent");
        }
    }
}

/// Starts `f`'s wait loop unless it runs already or failed too recently.
fn start_wait_loop(
    shared: &Arc<Shared>,
    running: &mut HashMap<FunctionName, Loop>,
    not_before: &HashMap<FunctionName, Instant>,
    f: Arc<FunctionRt>,
) {
    // A loop that ended and is not yet reaped is started again by the next pass, which finds its
    // calls in the wait stream, once `reap` has seen how it ended.
    if running.contains_key(&f.name) || not_before.get(&f.name).is_some_and(|t| *t > Instant::now())
    {
        return;
    }
    let name = f.name.clone();
    running.insert(name, shared.tracker.spawn(pull::run(shared.clone(), f)));
    shared.metrics.consumers.increment(1.0);
}

/// The shard's presence heartbeat: announces this replica every `PRESENCE_EVERY` and tells
/// `membership` how many replicas were heard from within `PRESENCE_EXPIRY`, itself included, and
/// its place among them (by id, so every replica orders them alike). A replica says
/// `hello` when it starts (the others answer at once, so it knows them within a round trip) and
/// `bye` when it stops pulling (the others take over its share at once). One that dies silently
/// drops out after `PRESENCE_EXPIRY`. No other coordination between replicas exists.
async fn presence(shared: Arc<Shared>, shard: u32, membership: watch::Sender<Membership>) {
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
            tracing::warn!(shard, %error, "no presence heartbeat: rates and concurrency are not split among replicas");
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
        let now = Membership {
            replicas: u32::try_from(others.len() + 1).unwrap_or(u32::MAX),
            index: u32::try_from(others.keys().filter(|o| o.as_str() < me.as_str()).count())
                .unwrap_or(u32::MAX),
        };
        membership.send_if_modified(|m| {
            let changed = *m != now;
            if changed {
                tracing::debug!(
                    shard,
                    replicas = now.replicas,
                    index = now.index,
                    "replicas of the shard"
                );
                *m = now;
            }
            changed
        });
    }
    announce("bye").await;
    let _ = sub.unsubscribe().await;
}

/// Collects finished wait loops, logging why they ended and when they may start again.
async fn reap(
    shared: &Shared,
    running: &mut HashMap<FunctionName, Loop>,
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
            Ok(Ok(Ended::Drained)) => {
                tracing::debug!(function = %f, shard, "no call of the function waits any more");
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
