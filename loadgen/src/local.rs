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
        call_status: args.call_status,
        function_url_template: Some(function_url_template),
        log: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        gateway: true,
        workers: Vec::new(),
        ready_within: Duration::from_secs(30),
    }
}

/// Descriptors kept back for NATS connections, the gateway and the load driver.
const RESERVED_FDS: u64 = 1024;

/// The most `--max-in-flight` each in-process worker can have. The workers, the built-in function
/// and the callback sink share this process's descriptors, and here a call holds both ends of its
/// socket (and a callback both ends of its own), so the limit left after a reserve is split among
/// the workers three ways per call. Above it, many functions' limits add up past the process's
/// descriptors and the tool itself becomes the cause of errors.
pub fn worker_max_in_flight(open_files: u64, workers: u32) -> u32 {
    let per_worker = open_files.saturating_sub(RESERVED_FDS) / (3 * u64::from(workers.max(1)));
    per_worker.clamp(16, 10_000) as u32
}

/// Each local worker's `--max-in-flight`: `--worker-max-in-flight`, within what this process's
/// descriptors allow.
pub fn max_in_flight(args: &RunArgs) -> u32 {
    args.worker_max_in_flight.min(worker_max_in_flight(
        flotilla_runtime::open_files_limit(),
        args.shards * args.replicas,
    ))
}

/// Shards × replicas workers, each replica with its share of the function concurrency and of
/// this process's descriptors.
pub fn workers(args: &RunArgs) -> Vec<WorkerSpec> {
    let per_replica = args.worker_concurrency.div_ceil(args.replicas).max(1);
    let max_in_flight = max_in_flight(args);
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
                        "--max-in-flight".into(),
                        max_in_flight.to_string(),
                        "--adaptive".into(),
                        args.adaptive.to_string(),
                        // Short enough that the end of a run does not wait on an idle drain.
                        "--grace".into(),
                        "5s".into(),
                    ],
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_the_process_descriptors_with_both_ends_of_each_socket() {
        // 20,000 descriptors, two workers: each takes (20,000 - 1,024) / 6.
        assert_eq!(worker_max_in_flight(20_000, 2), 3_162);
        assert_eq!(worker_max_in_flight(1024, 4), 16);
        assert_eq!(worker_max_in_flight(u64::MAX, 1), 10_000);
    }
}
