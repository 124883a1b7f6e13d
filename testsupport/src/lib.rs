//! Real servers for Flotilla's tests: a `nats-server` with JetStream on a port of its choosing and
//! a temporary store (alone or as a cluster of three; `flotilla-natsd`'s launcher, failing the test
//! when it cannot start), and a recording HTTP server that plays a scripted function or a callback
//! sink, in the clear or over TLS with certificates `openssl` makes for the test; and a headless
//! browser driven over WebDriver. Everything binds 127.0.0.1 and stops in `Drop`.

mod binary;
mod browser;
mod http_server;
mod lab;
mod nats;
mod port;
mod tls;
mod wait;

pub use binary::{Finished, assert_help_and_version, assert_refused, run_binary};
pub use browser::{Browser, DriverError, NoBrowser};
pub use http_server::{Handler, Recorded, RecordingServer, Reply};
pub use lab::{Host, Impairment, Lab, LabError, NoLab, NsRuntime};
pub use nats::{NatsCluster, NatsServer, TestServer};
pub use port::closed_port;
pub use tls::Certificates;
pub use wait::{wait_until, wait_until_async};
