//! `--local`: what the fleet this run starts in-process is made of (the gateway and shards ×
//! replicas workers against the run's nats-server and built-in function). Starting and stopping
//! it is `flotilla_fleet`'s.

use std::time::Duration;

use flotilla_fleet::{FleetOptions, WorkerSpec};

use crate::config::RunArgs;

/// The gateway (started at once) on `nats_url`, calling functions at `function_url_template`;
/// workers follow with `workers`.
pub fn fleet_options(
    args: &RunArgs,
    nats_url: String,
    function_url_template: String,
) -> FleetOptions {
    FleetOptions {
        nats_url: Some(nats_url),
        shards: args.shards,
        memory_streams: args.memory_streams,
        function_url_template: Some(function_url_template),
        log: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        gateway: true,
        workers: Vec::new(),
        ready_within: Duration::from_secs(30),
    }
}

/// Shards × replicas workers, each replica with its share of the function concurrency.
pub fn workers(args: &RunArgs) -> Vec<WorkerSpec> {
    let per_replica = args.worker_concurrency.div_ceil(args.replicas).max(1);
    (0..args.shards)
        .flat_map(|shard| {
            (0..args.replicas).map(move |replica| {
                WorkerSpec::new(
                    format!("worker shard {shard} replica {replica}"),
                    [
                        "--shard".to_owned(),
                        shard.to_string(),
                        "--concurrency".into(),
                        args.worker_concurrency.to_string(),
                        "--replica-concurrency".into(),
                        per_replica.to_string(),
                        // Short enough that the end of a run does not wait on an idle drain.
                        "--grace".into(),
                        "5s".into(),
                    ],
                )
            })
        })
        .collect()
}
