//! nats-server for tests: the launcher of `flotilla_natsd`, with a server that cannot
//! start or answer being the test's failure, so a test reads `NatsServer::start()` and goes on.

use std::ops::{Deref, DerefMut};

/// A server of the launcher whose failures panic; everything it does not override
/// (`url`, `kill`, `pid`, `nodes`, …) is the launcher's own, through `Deref`.
#[derive(Debug)]
pub struct TestServer<T>(T);

impl<T> Deref for TestServer<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for TestServer<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// One nats-server with JetStream on a port of its choosing and a temporary store; killed on
/// drop.
pub type NatsServer = TestServer<flotilla_natsd::NatsServer>;

impl NatsServer {
    pub fn start() -> Self {
        Self(flotilla_natsd::NatsServer::start().expect("start nats-server"))
    }

    /// Starts the process again on the same port and store, after `kill`.
    pub fn resume(&mut self) {
        self.0.resume().expect("restart nats-server");
    }

    /// A client connection with JetStream ready to answer.
    pub async fn client(&self) -> async_nats::Client {
        self.0.client().await.expect("JetStream ready")
    }
}

/// Three nats-servers routed into one JetStream cluster on loopback.
pub type NatsCluster = TestServer<flotilla_natsd::NatsCluster>;

impl NatsCluster {
    pub fn start() -> Self {
        Self(flotilla_natsd::NatsCluster::start().expect("start a nats-server cluster"))
    }

    /// A client once the cluster is whole (a stream with three replicas can be placed).
    pub async fn client(&self) -> async_nats::Client {
        self.0.client().await.expect("the cluster whole")
    }
}
