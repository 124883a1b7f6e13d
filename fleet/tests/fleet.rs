//! The fleet launcher against the real binaries' libraries: a whole fleet starts, answers and
//! stops cleanly, and each way a process fails to start comes back as an error, not a panic.

use std::time::Duration;

use flotilla_fleet::{Fleet, FleetError, FleetOptions, Gateway, Worker, WorkerSpec};

const GRACE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_starts_ready_and_stops_cleanly() {
    let mut fleet = Fleet::start(FleetOptions {
        shards: 2,
        gateway: true,
        workers: vec![WorkerSpec::new("worker 0", ["--shard", "0"])],
        ..FleetOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(fleet.topology().shards, 2);
    assert!(fleet.nats_server().is_some_and(|s| s.is_running()));
    let gateway = fleet.gateway().unwrap().url();
    assert!(gateway.starts_with("http://127.0.0.1:"), "{gateway}");
    assert_eq!(fleet.workers().len(), 1);
    assert_eq!(fleet.workers()[0].name(), "worker 0");

    fleet
        .start_workers([WorkerSpec::new("worker 1", ["--shard", "1"])])
        .await
        .unwrap();
    assert_eq!(fleet.workers().len(), 2);
    fleet.stop_workers(GRACE).await.unwrap();
    assert!(fleet.workers().is_empty());
    fleet.stop(GRACE).await.unwrap();
}

#[tokio::test]
async fn an_unknown_flag_is_a_configuration_error() {
    let err = Gateway::start(["--no-such-flag"]).await.unwrap_err();
    assert!(
        matches!(
            err,
            FleetError::Config {
                which: "flotilla-gateway",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_stops_while_starting_fails_its_readiness_with_the_reason() {
    let fleet = Fleet::start(FleetOptions {
        shards: 2,
        ..FleetOptions::default()
    })
    .await
    .unwrap();
    let mut worker = Worker::start(["--nats-url", fleet.nats_url(), "--shards", "3"])
        .await
        .unwrap()
        .named("mismatched worker");
    let err = worker.wait_ready(GRACE).await.unwrap_err();
    let FleetError::Failed { which, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(which, "mismatched worker");
    assert!(source.to_string().contains("--shards 2"), "{source}");
    // What `run` returned has been handed over once.
    assert!(matches!(
        worker.join(GRACE).await,
        Err(FleetError::Joined { .. })
    ));
}

#[tokio::test]
async fn join_gives_back_what_run_returned() {
    let fleet = Fleet::start(FleetOptions::default()).await.unwrap();
    let mut gateway = Gateway::start(["--nats-url", fleet.nats_url(), "--shards", "5"])
        .await
        .unwrap();
    let returned = gateway.join(GRACE).await.unwrap();
    assert!(returned.unwrap_err().to_string().contains("--shards 1"));
}
