//! One function's wait loop: while calls of the function wait in the shard's wait stream (it was
//! at its concurrency, its rate, or its share of the replica when they were dispatched), its
//! durable consumer there, and a loop that asks NATS for exactly as many messages as the function
//! has free slots, so no message waits in a local buffer while its `ack_wait` clock runs. Each
//! waiting function has its own loop, consumer and slots, so a slow or saturated function never
//! holds back another (no head-of-line blocking). A rate-limited function asks only for messages
//! it may start now, so its backlog waits in the stream without burning delivery attempts. The
//! loop ends once nothing waits.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{HeaderMap, StatusCode};
use flotilla_queue::{FunctionName, FunctionPolicy, subjects};
use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::Shared;
use crate::budget::Slot;
use crate::call;
use crate::error::PullError;
use crate::functions::FunctionRt;

mod ledger;

use ledger::{Ledger, RateShare};

/// How a pull loop paces its requests to NATS. A busy function renews its pull request often and
/// notices a lost one quickly; a quiet one (nothing delivered or waiting for `QUIET_AFTER`) asks
/// rarely, so thousands of idle functions cost NATS and the worker little.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// How long a pull request waits at the server for messages before it expires and is renewed.
    pub expires: Duration,
    /// While a pull request waits, the server sends a heartbeat this often...
    pub heartbeat: Duration,
    /// ...so when nothing at all arrived for this long, the request is lost (this replica
    /// reconnected to another node, or the consumer's leader died with it) and is sent again.
    pub lost_after: Duration,
    /// How often the consumer is read (for `worker_pending` and idle detection).
    info_every: Duration,
}

pub(crate) const BUSY: Pace = Pace {
    expires: Duration::from_secs(5),
    heartbeat: Duration::from_secs(1),
    lost_after: Duration::from_millis(2500),
    info_every: Duration::from_secs(1),
};
const QUIET: Pace = Pace {
    expires: Duration::from_secs(30),
    heartbeat: Duration::from_secs(5),
    lost_after: Duration::from_millis(11_000),
    info_every: Duration::from_secs(30),
};
/// A function with nothing delivered for this long is quiet.
const QUIET_AFTER: Duration = Duration::from_secs(10);

impl Pace {
    fn of(last_activity: Instant, consumer_idle: Duration) -> Self {
        let mut pace = if last_activity.elapsed() < QUIET_AFTER {
            BUSY
        } else {
            QUIET
        };
        // Idle detection must be able to act within `--consumer-idle`, and a released consumer
        // must not be kept alive by its last request for much longer than that.
        pace.info_every = pace.info_every.min(consumer_idle / 2);
        if pace.expires > consumer_idle.max(BUSY.expires) {
            pace = Pace {
                info_every: pace.info_every,
                ..BUSY
            };
        }
        pace
    }
}

/// A consumer-info request in progress.
type InfoCall = Pin<
    Box<dyn Future<Output = Result<consumer::Info, jetstream::context::ConsumerInfoError>> + Send>,
>;
/// A wait for one of the replica's permits.
type PermitWait = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// How a wait loop ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The worker is shutting down.
    Stopped,
    /// No call of the function waits any more: its calls are dispatched directly again.
    Drained,
}

/// The durable consumer of a function's waiting calls.
pub(crate) fn consumer_config(
    function: &FunctionName,
    shard: u32,
    policy: &FunctionPolicy,
    ack_wait: Duration,
    inactive: Duration,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::consumer_name(function)),
        description: Some(format!("Flotilla calls of {function} waiting for room")),
        filter_subject: subjects::wait_subject(shard, function),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // The worker settles every call itself (ack, term to the dead letters, or nak); NATS
        // must never drop one silently after some number of deliveries.
        max_deliver: -1,
        // The cluster-wide concurrency: NATS enforces it across every replica.
        max_ack_pending: i64::from(policy.concurrency),
        // A function whose calls no longer wait loses its consumer; the next call that has to
        // wait makes it again.
        inactive_threshold: inactive,
        // Its state (which waiting calls are delivered) in memory: consumers come and go with
        // the functions that are at a limit, and a file each would cost nats-server a directory
        // and a state file written per flush. After a server restart the calls delivered and
        // not acked are delivered again, which a work queue allows.
        memory_storage: true,
        ..Default::default()
    }
}

/// Creates (or updates) the function's consumer and pulls until stopped, drained, or broken.
pub(crate) async fn run(shared: Arc<Shared>, f: Arc<FunctionRt>) -> Result<Ended, PullError> {
    // New calls queue behind those found waiting, rather than overtake them.
    f.set_waiting(true);
    let stream = subjects::wait_stream(f.shard);
    let config = consumer_config(
        &f.name,
        f.shard,
        &f.policy,
        shared.ack_wait,
        shared.consumer_idle,
    );
    let consumer: consumer::PullConsumer = shared
        .js
        .create_consumer_on_stream(config, stream.as_str())
        .await
        .map_err(|e| PullError::creating(subjects::consumer_name(&f.name), &e))?;
    let (inbox, mut sub) = open_inbox(&shared).await?;
    tracing::debug!(function = %f.name, shard = f.shard, "pulling");

    let mut ledger = Ledger::new(
        f.policy.replica_concurrency as usize,
        f.slots.clone(),
        f.running.clone(),
    );
    let rate = f.policy.rate_per_second.and_then(NonZeroU32::new);
    let mut membership = f.membership.clone();
    let mut watch_replicas = rate.is_some();
    let mut share = rate.map(|r| RateShare::new(r, membership.borrow_and_update().replicas));
    let mut lost_at = Instant::now();
    let mut lost_after = BUSY.lost_after;
    let mut last_activity = Instant::now();
    let mut next_info = Instant::now();
    let mut info_call: Option<InfoCall> = None;
    // Waiting for a replica permit keeps its place in the queue across turns of the loop.
    let mut permit_wait: Option<PermitWait> = None;

    let ended = loop {
        // Nothing waits any more (see the consumer reading below) and no request of this loop is
        // open at the server: a message sent to an inbox nobody reads would wait out `ack_wait`.
        // The end does not hang on reading the consumer again, which NATS may have removed.
        if f.is_waiting() {
            ledger.set_busy(last_activity.elapsed() < QUIET_AFTER);
            ledger.reserve();
        } else if ledger.outstanding() == 0 {
            break Ended::Drained;
        } else {
            // The open request runs out holding nothing back: the function's new calls start
            // directly, and other functions and the dispatch loop get the replica's permits
            // (holding them until the request expired stalled a replica for seconds).
            ledger.stand_down();
        }
        let paused = shared.budget.paused_until();
        let plan = ledger.plan(share.as_ref(), paused.is_some());
        // Once nothing waits, no new request: the loop ends when its last one is closed.
        if plan.request > 0 && f.is_waiting() {
            let pace = Pace::of(last_activity, shared.consumer_idle);
            let batch = consumer::pull::BatchConfig {
                batch: plan.request,
                expires: Some(pace.expires),
                idle_heartbeat: pace.heartbeat,
                ..Default::default()
            };
            consumer
                .request_batch(batch, inbox.clone().into())
                .await
                .map_err(|e| PullError::Request(e.to_string()))?;
            lost_after = pace.lost_after;
            ledger.requested(plan.request, share.is_some());
            lost_at = Instant::now() + lost_after;
        }
        if plan.budget_blocked && permit_wait.is_none() {
            permit_wait = Some(Box::pin(shared.budget.permits().clone().acquire_owned()));
        }

        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break Ended::Stopped,
            m = sub.next() => {
                let Some(m) = m else { return Err(PullError::Closed) };
                // Anything on the inbox (a message, a status, a heartbeat) shows the requests
                // are alive.
                lost_at = Instant::now() + lost_after;
                match arrival(&shared, m, &f.name).await? {
                    Arrival::Message(msg) => {
                        last_activity = Instant::now();
                        let slot = match ledger.arrived() {
                            Some(slot) => slot,
                            None => match wait_for_slot(&shared, &f, &mut ledger).await {
                                Some(slot) => slot,
                                None => {
                                    call::hand_back(&shared, &msg).await;
                                    break Ended::Stopped;
                                }
                            },
                        };
                        shared.tracker.spawn(call::handle(shared.clone(), f.clone(), msg, slot));
                    }
                    Arrival::Expired(unfulfilled) => ledger.expired(unfulfilled),
                    Arrival::Heartbeat => {}
                    Arrival::Stopping => {
                        ledger.expired(None);
                        break Ended::Stopped;
                    }
                }
            }
            slot = f.slots.clone().acquire_many_owned(plan.wake_at), if f.is_waiting() => {
                // Calls released their slots.
                if let Ok(slot) = slot {
                    ledger.add_slots(slot);
                }
            }
            Some(permit) = OptionFuture::from(permit_wait.as_mut()), if permit_wait.is_some() => {
                permit_wait = None;
                if let Ok(permit) = permit {
                    ledger.add_permit(permit);
                }
            }
            _ = until_ready(share.as_ref()), if plan.rate_blocked => ledger.rate_token(),
            _ = tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => {}
            changed = membership.changed(), if watch_replicas => match (changed, rate) {
                (Ok(()), Some(rate)) => {
                    let n = membership.borrow_and_update().replicas;
                    if share.as_ref().is_some_and(|s| s.replicas != n) {
                        tracing::debug!(function = %f.name, replicas = n, "rate shared anew");
                        share = Some(RateShare::new(rate, n));
                    }
                }
                // The shard's heartbeat ended (shutdown): keep the last share.
                _ => watch_replicas = false,
            },
            _ = tokio::time::sleep_until(lost_at), if ledger.outstanding() > 0 => {
                ledger.expired(None);
            }
            // The consumer is read beside the loop, not in it: during a NATS disruption the
            // request may take seconds, and messages must not wait behind it.
            _ = tokio::time::sleep_until(next_info), if info_call.is_none() => {
                let consumer = consumer.clone();
                info_call = Some(Box::pin(async move { consumer.get_info().await }));
            }
            Some(info) = OptionFuture::from(info_call.as_mut()), if info_call.is_some() => {
                info_call = None;
                next_info = Instant::now() + Pace::of(last_activity, shared.consumer_idle).info_every;
                match info {
                    Ok(info) => {
                        f.metrics.pending.set(info.num_pending as f64);
                        // A rate-limited function's calls all pass through here: its loop stays
                        // for as long as they keep coming, rather than start over for each.
                        let lingering = f.always_waits() && last_activity.elapsed() < QUIET_AFTER;
                        if info.num_pending == 0 && f.moves_in_progress() == 0 && !lingering {
                            // New calls start directly again; a move that begins from now on
                            // sets the function waiting again and is delivered to this loop, or
                            // restarts it (see `dispatch`).
                            f.set_waiting(false);
                        }
                    }
                    Err(error) => tracing::debug!(function = %f.name, %error, "consumer info"),
                }
            }
        }
    };
    drop(ledger);
    hand_back_inbox(&shared, sub).await;
    f.metrics.pending.set(0.0);
    Ok(ended)
}

/// How long a stopping pull loop waits for its inbox to drain. A message that arrives later is
/// neither run nor handed back, and returns only after `ack_wait`.
const INBOX_DRAIN: Duration = Duration::from_secs(5);

/// Stops pulling: unsubscribes the pull inbox, and hands back whatever still arrives on it for
/// earlier requests (for at most [`INBOX_DRAIN`]).
pub(crate) async fn hand_back_inbox(shared: &Shared, mut sub: async_nats::Subscriber) {
    let _ = sub.drain().await;
    let drained = tokio::time::timeout(INBOX_DRAIN, async {
        while let Some(m) = sub.next().await {
            if m.status.is_none() || m.status == Some(StatusCode::OK) {
                let msg = jetstream::Message {
                    message: m,
                    context: shared.js.clone(),
                };
                call::hand_back(shared, &msg).await;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            after = ?INBOX_DRAIN,
            "pull inbox did not drain in time; calls still on their way return after ack_wait"
        );
    }
}

/// A fresh pull inbox and its subscription.
pub(crate) async fn open_inbox(
    shared: &Shared,
) -> Result<(String, async_nats::Subscriber), PullError> {
    let inbox = shared.client.new_inbox();
    let sub = shared
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| PullError::Subscribe(e.to_string()))?;
    Ok((inbox, sub))
}

/// What arrived on a pull inbox. Matched at once and never stored, so the message is not boxed:
/// that would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Arrival {
    /// A message asked for.
    Message(jetstream::Message),
    /// A request ended with this many messages it will never deliver (`None`: unknown, so all).
    Expired(Option<usize>),
    /// The server's sign that a request is alive.
    Heartbeat,
    /// The worker stopped while waiting for JetStream to answer again.
    Stopping,
}

/// Sorts what arrived on a pull inbox; `puller` names the loop in the log. Any other status ends
/// every request (after half a second when JetStream did not answer, so the loop does not spin);
/// a deleted consumer ends the loop.
pub(crate) async fn arrival(
    shared: &Shared,
    m: async_nats::Message,
    puller: &(dyn std::fmt::Display + Sync),
) -> Result<Arrival, PullError> {
    match m.status {
        None | Some(StatusCode::OK) => Ok(Arrival::Message(jetstream::Message {
            message: m,
            context: shared.js.clone(),
        })),
        Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) => {
            if m.description.as_deref() == Some("Consumer Deleted") {
                return Err(PullError::ConsumerDeleted);
            }
            Ok(Arrival::Expired(pending_messages(m.headers.as_ref())))
        }
        Some(StatusCode::IDLE_HEARTBEAT) => Ok(Arrival::Heartbeat),
        Some(status) => {
            tracing::debug!(%puller, %status, description = ?m.description, "pull status");
            if status == StatusCode::NO_RESPONDERS {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shared.stop.cancelled() => return Ok(Arrival::Stopping),
                }
            }
            Ok(Arrival::Expired(None))
        }
    }
}

/// A message arrived beyond what was asked for: waits for the slot it lacks rather than exceed a
/// limit or burn a delivery. `None` when the worker stops first.
async fn wait_for_slot(shared: &Shared, f: &FunctionRt, ledger: &mut Ledger) -> Option<Slot> {
    loop {
        if let Some(slot) = ledger.take_slot() {
            return Some(slot);
        }
        let (needs_slot, needs_permit) = ledger.lacks();
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            p = f.slots.clone().acquire_owned(), if needs_slot => ledger.add_slots(p.ok()?),
            p = shared.budget.permits().clone().acquire_owned(), if needs_permit => ledger.add_permit(p.ok()?),
        }
    }
}

async fn until_ready(share: Option<&RateShare>) {
    match share {
        Some(s) => s.until_ready().await,
        None => std::future::pending().await,
    }
}

/// The unfulfilled part of an expired or terminated pull request.
fn pending_messages(headers: Option<&HeaderMap>) -> Option<usize> {
    headers?
        .get(flotilla_queue::headers::NATS_PENDING_MESSAGES)?
        .as_str()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_enforces_the_cluster_limit_and_never_gives_up() {
        let f = FunctionName::parse("echo.ns").unwrap();
        let p = FunctionPolicy {
            concurrency: 7,
            ..FunctionPolicy::default()
        };
        let c = consumer_config(&f, 2, &p, Duration::from_secs(3), Duration::from_secs(60));
        assert_eq!(c.max_ack_pending, 7);
        assert_eq!(c.max_deliver, -1);
        assert_eq!(c.filter_subject, "flotilla.wait.2.echo.ns");
        assert_eq!(
            c.durable_name.as_deref(),
            Some(subjects::consumer_name(&f).as_str())
        );
        assert_eq!(c.ack_policy, consumer::AckPolicy::Explicit);
    }

    #[test]
    fn quiet_functions_ask_rarely_but_within_the_idle_time() {
        let now = Instant::now();
        let five_minutes = Duration::from_secs(300);
        assert_eq!(Pace::of(now, five_minutes).expires, BUSY.expires);
        let long_ago = now - Duration::from_secs(60);
        let quiet = Pace::of(long_ago, five_minutes);
        assert_eq!(
            (quiet.expires, quiet.info_every),
            (QUIET.expires, QUIET.info_every)
        );
        let short_idle = Pace::of(long_ago, Duration::from_secs(2));
        assert_eq!(short_idle.expires, BUSY.expires);
        assert_eq!(short_idle.info_every, Duration::from_secs(1));
        for p in [BUSY, QUIET] {
            // The server refuses a heartbeat above half the expiry; two may be lost.
            assert!(p.heartbeat * 2 <= p.expires && p.lost_after > p.heartbeat * 2);
        }
    }

    #[test]
    fn reads_pending_from_status_headers() {
        let mut h = HeaderMap::new();
        h.insert(flotilla_queue::headers::NATS_PENDING_MESSAGES, "12");
        assert_eq!(pending_messages(Some(&h)), Some(12));
        assert_eq!(pending_messages(None), None);
    }
}
