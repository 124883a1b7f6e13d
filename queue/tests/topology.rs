//! The topology agreement against a real nats-server: first writer wins, a different explicit
//! count is refused, an unset count adopts what is stored.

use flotilla_queue::topology::{StreamSettings, Topology, TopologyError};
use flotilla_testsupport::NatsServer;

#[tokio::test]
async fn shard_count_is_agreed_once() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let s = StreamSettings::default();

    let t = Topology::agree(&js, Some(3), &s).await.unwrap();
    assert_eq!(t.shards, 3);
    t.ensure_streams(&js, &s).await.unwrap();
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
