//! The pooled HTTP/1.1 client of the gateway's synchronous calls and of the loadgen (its ceilings
//! and its driver), configured once: no Nagle delay, a connect timeout, and a pool timer so idle
//! connections really expire. (The worker calls functions through its own `http1` client, which
//! costs far less per call in flight.)

use std::time::Duration;

use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Settings of the pooled HTTP/1.1 client.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept per host; the per-function concurrency limit caps open ones.
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept. Needs the pool timer, which `pooled_client` sets.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_per_host: 1024,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The pooled client. hyper-util's legacy client never caps open connections: callers cap them
/// with their own concurrency limits.
pub fn pooled_client<B>(s: PoolSettings) -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(s.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.idle_timeout)
        .pool_max_idle_per_host(s.max_idle_per_host)
        .build(connector)
}
