//! The topology agreement against a real nats-server: first writer wins, a different explicit
//! count is refused, an unset count adopts what is stored; streams made with other stream
//! settings are reported, not changed.

use flotilla_natsd::NatsServer;
use flotilla_queue::topology::{StreamSettings, Topology, TopologyError};

#[tokio::test]
async fn shard_count_is_agreed_once() {
    let nats = NatsServer::start().expect("start nats-server");
    let js = async_nats::jetstream::new(nats.client().await.expect("JetStream ready"));
    let s = StreamSettings::default();

    let t = Topology::agree(&js, Some(3), &s).await.unwrap();
    assert_eq!(t.shards, 3);
    let drifts = t.ensure_streams(&js, &s).await.unwrap();
    assert!(drifts.is_empty(), "{drifts:?}");
    assert!(t.streams_present(&js).await);

    assert_eq!(Topology::agree(&js, None, &s).await.unwrap().shards, 3);
    assert_eq!(Topology::agree(&js, Some(3), &s).await.unwrap().shards, 3);
    match Topology::agree(&js, Some(5), &s).await {
        Err(
            e @ TopologyError::Mismatch {
                stored: 3,
                configured: 5,
            },
        ) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("--shards 3"), "{e}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // A shard stream made before retries lived in it gains the retry subject.
    let mut old = flotilla_queue::topology::call_stream_config(0, &s);
    old.subjects.truncate(1);
    js.update_stream(old).await.unwrap();
    t.ensure_streams(&js, &s).await.unwrap();
    let mut stream = js.get_stream("FLOTILLA_CALLS_0").await.unwrap();
    let subjects = stream.info().await.unwrap().config.subjects.clone();
    assert_eq!(subjects, ["flotilla.call.0.>", "flotilla.retry.0.>"]);
    // A topology that claims more shards than exist is not ready.
    assert!(!Topology { shards: 4 }.streams_present(&js).await);
}

#[tokio::test]
async fn streams_made_with_other_settings_are_reported_not_changed() {
    use async_nats::jetstream::stream::StorageType;

    let nats = NatsServer::start().expect("start nats-server");
    let js = async_nats::jetstream::new(nats.client().await.expect("JetStream ready"));
    let memory = StreamSettings {
        storage: StorageType::Memory,
        ..StreamSettings::default()
    };
    let t = Topology::agree(&js, Some(1), &memory).await.unwrap();
    assert!(t.ensure_streams(&js, &memory).await.unwrap().is_empty());

    let drifts = t
        .ensure_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    let names: Vec<&str> = drifts.iter().map(|d| d.stream.as_str()).collect();
    for name in [
        "FLOTILLA_CALLS_0",
        "FLOTILLA_WAIT_0",
        "FLOTILLA_DEAD",
        "OBJ_FLOTILLA_BODIES",
        "FLOTILLA_STATUS",
        "FLOTILLA_RESULTS",
        "FLOTILLA_CANCELS",
        "FLOTILLA_BATCHES",
    ] {
        assert!(names.contains(&name), "{name} not reported: {names:?}");
    }
    let calls = &drifts[0];
    assert_eq!(
        (
            calls.storage,
            calls.asked_storage,
            calls.replicas,
            calls.asked_replicas
        ),
        (StorageType::Memory, StorageType::File, 1, 1)
    );
    // Reported, not changed: the stream keeps its storage.
    let mut stream = js.get_stream("FLOTILLA_CALLS_0").await.unwrap();
    let storage = stream.info().await.unwrap().config.storage;
    assert_eq!(storage, StorageType::Memory);
}
