//! The pooled HTTP/1.1 client of the gateway's synchronous calls and of the loadgen (its ceilings
//! and its driver), configured once: no Nagle delay, a connect timeout, and a pool timer so idle
//! connections really expire. The gateway's variant also speaks `https://` on the function TLS
//! set-up. (The worker calls functions through its own `http1` client, which costs far less per
//! call in flight.)

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::FunctionTls;

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

/// The pooled client to functions that may be `http://` or `https://`.
pub type FunctionClient<B> = Client<HttpsConnector<HttpConnector>, B>;

fn connector(s: PoolSettings) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(s.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector
}

fn pool<C, B>(s: PoolSettings, connector: C) -> Client<C, B>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.idle_timeout)
        .pool_max_idle_per_host(s.max_idle_per_host)
        .build(connector)
}

/// The pooled client. hyper-util's legacy client never caps open connections: callers cap them
/// with their own concurrency limits.
pub fn pooled_client<B>(s: PoolSettings) -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    pool(s, connector(s))
}

/// [`pooled_client`] for function URLs that may be `https://`: TLS through hyper-rustls on the
/// shared rustls configuration of `tls` (HTTP/1.1, no ALPN), plain TCP for `http://`. The pool
/// keys connections by scheme, host and port, so the two never share one.
pub fn function_client<B>(s: PoolSettings, tls: &FunctionTls) -> FunctionClient<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = connector(s);
    // The HTTP connector refuses `https://` URIs unless told the TLS layer above handles them.
    http.enforce_http(false);
    pool(s, HttpsConnector::from((http, tls.config())))
}
