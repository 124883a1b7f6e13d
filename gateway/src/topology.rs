//! The topology task: agrees the shard count with NATS, makes sure the streams and stores exist
//! (retrying while NATS is unreachable or not ready), opens them into `State::streams`, then
//! re-creates streams a publish finds missing. Invariant: a shard count that disagrees with the
//! stored one is never retried; it is sent on `fatal` and ends `serve`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use flotilla_queue::topology::{StreamDrift, StreamSettings};
use flotilla_queue::{Backoff, Jitter, Topology, TopologyError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Waits between tries of agreeing the topology while NATS is unreachable or not ready: 100 ms
/// doubling up to 2 s (see `docs/ARCHITECTURE.md`, gateway).
const AGREE_BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(2),
    Jitter::None,
);

/// How often, at most, missing streams are looked for and re-created.
const RECREATE_EVERY: Duration = Duration::from_secs(1);

/// Agrees the topology and opens what it names, then watches for missing streams until `token`
/// is cancelled. A mismatch or a corrupt topology is reported through `fatal`.
pub async fn run(
    state: Arc<State>,
    shards: Option<u32>,
    settings: StreamSettings,
    token: CancellationToken,
    fatal: mpsc::Sender<TopologyError>,
) {
    let Some(topology) = agree(&state, shards, &settings, &token, fatal).await else {
        return;
    };
    recreate_missing(&state, topology, &settings, &token).await;
}

/// What one successful agreement opened.
struct Agreed {
    topology: Topology,
    drifts: Vec<StreamDrift>,
    bodies: ObjectStore,
}

/// Tries to agree until it succeeds (`Some`), the topology disagrees (`None`, sent on `fatal`)
/// or `token` is cancelled (`None`).
async fn agree(
    state: &State,
    shards: Option<u32>,
    settings: &StreamSettings,
    token: &CancellationToken,
    fatal: mpsc::Sender<TopologyError>,
) -> Option<Topology> {
    let mut delays = AGREE_BACKOFF.delays();
    loop {
        if state.nats.connected() {
            let result = tokio::select! {
                r = attempt(state, shards, settings) => r,
                () = token.cancelled() => return None,
            };
            match result {
                Ok(agreed) => return Some(open(state, agreed).await),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "topology not agreed yet; retrying");
                    state.topology_problem(Some(error));
                }
                Err(error) => {
                    let _ = fatal.send(error).await;
                    return None;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delays.next_delay()) => {}
            () = token.cancelled() => return None,
        }
    }
}

/// One try: the shard count, the streams and the object store of large bodies (in the attempt,
/// so NATS failing there is retried like the rest).
async fn attempt(
    state: &State,
    shards: Option<u32>,
    settings: &StreamSettings,
) -> Result<Agreed, TopologyError> {
    let js = &state.nats.js;
    let topology = Topology::agree(js, shards, settings).await?;
    let drifts = topology.ensure_streams(js, settings).await?;
    let bodies = Topology::ensure_bodies(js, settings).await?;
    Ok(Agreed {
        topology,
        drifts,
        bodies,
    })
}

/// Puts what the agreement opened into the state; the topology last, as it opens the
/// asynchronous routes.
async fn open(state: &State, agreed: Agreed) -> Topology {
    let Agreed {
        topology,
        drifts,
        bodies,
    } = agreed;
    state.topology_problem(None);
    // Logged by `ensure_streams`; kept for `/system/info`.
    let _ = state
        .streams
        .warnings
        .set(drifts.iter().map(ToString::to_string).collect());
    tracing::info!(
        shards = topology.shards,
        "topology agreed; accepting asynchronous calls"
    );
    state.metrics.shards(topology.shards);
    let _ = state.streams.bodies.set(bodies);
    // Handles only, no request: this fails only on a bug.
    match flotilla_queue::status::Store::new(state.nats.js.clone()).await {
        Ok(store) => state.status.opened(store),
        Err(error) => tracing::error!(%error, "call status streams not opened"),
    }
    let _ = state.streams.topology.set((topology, topology.shard_map()));
    topology
}

/// Streams can vanish after the agreement (deleted by an operator, or lost when a NATS with
/// memory storage restarts); re-creates them when a publish finds none and JetStream confirms
/// it, at most once every [`RECREATE_EVERY`].
async fn recreate_missing(
    state: &State,
    topology: Topology,
    settings: &StreamSettings,
    token: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = state.streams.missing.notified() => {}
            () = token.cancelled() => return,
        }
        tokio::select! {
            () = recreate(state, topology, settings) => {}
            () = token.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(RECREATE_EVERY) => {}
            () = token.cancelled() => return,
        }
    }
}

async fn recreate(state: &State, topology: Topology, settings: &StreamSettings) {
    let js = &state.nats.js;
    match topology.missing_streams(js).await {
        Ok(missing) if missing.is_empty() => {
            tracing::debug!(
                "a publish found no stream, yet every stream is there (a stream leader was being elected)"
            );
        }
        Ok(missing) => match topology.ensure_streams(js, settings).await {
            Ok(_) => tracing::warn!(?missing, "shard streams were missing; re-created"),
            Err(error) => {
                tracing::warn!(%error, ?missing, "shard streams missing and not re-created yet")
            }
        },
        // JetStream does not answer: nothing tells that a stream is gone.
        Err(error) => {
            tracing::debug!(%error, "streams not checked; JetStream did not answer")
        }
    }
}
