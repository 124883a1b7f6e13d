//! The nats-server launcher against the real binary: a server picks its own port, and a killed
//! one comes back on the same port with its store, so clients reconnect to what they knew.

use std::time::Duration;

use flotilla_natsd::NatsServer;

#[tokio::test]
async fn a_resumed_server_keeps_its_port_and_its_streams() {
    let mut server = NatsServer::launch().await.unwrap();
    let port = server.port();
    assert_ne!(port, 0);
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KEPT".into(),
        subjects: vec!["kept".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    server.kill();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    server.resume().unwrap();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    tokio::time::timeout(Duration::from_secs(15), js.get_stream("KEPT"))
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn resuming_a_running_server_is_an_error() {
    let mut server = NatsServer::start().unwrap();
    let err = server.resume().unwrap_err();
    assert!(
        matches!(err, flotilla_natsd::NatsError::AlreadyRunning),
        "{err}"
    );
}
