//! Real servers for Flotilla's tests: a `nats-server` with JetStream on a port of its choosing and
//! a temporary store (alone or as a cluster of three; the fleet's launcher, failing the test when
//! it cannot start), and a recording HTTP server that plays a scripted function or a callback
//! sink, in the clear or over TLS with certificates `openssl` makes for the test; and a headless
//! browser driven over WebDriver. Everything binds 127.0.0.1 and stops in `Drop`.

mod binary;
mod browser;
mod http_server;
mod lab;
mod nats;
mod tls;

pub use binary::{Finished, assert_help_and_version, assert_refused, run_binary};
pub use browser::{Browser, DriverError, NoBrowser};
pub use http_server::{Handler, Recorded, RecordingServer, Reply};
pub use lab::{Host, Impairment, Lab, LabError, NoLab, NsRuntime};
pub use nats::{NatsCluster, NatsServer, TestServer};
pub use tls::Certificates;

use std::time::Duration;

/// Waits until `cond` holds, checking every 10 ms, or panics with `what` after `timeout`.
/// Tests use this instead of sleeping for a guessed time.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like `wait_until`, for a condition that has to await (an HTTP probe, a stream lookup).
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
