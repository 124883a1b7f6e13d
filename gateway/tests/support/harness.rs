//! Shared by the gateway's integration tests: a gateway started in-process on port 0 with a
//! shutdown handle (the fleet's launcher), a plain hyper client, and a reader for the messages in
//! a shard stream.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use flotilla_gateway::GatewayError;
use flotilla_queue::{Envelope, FunctionName, subjects};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound on any single step of a test, so a hang fails instead of stalling the suite.
pub const STEP: Duration = Duration::from_secs(15);

/// A gateway served by `flotilla_gateway::run` inside the test's runtime, through the fleet's
/// launcher. Dropping it asks `run` to stop.
pub struct Gateway {
    pub addr: SocketAddr,
    inner: flotilla_fleet::Gateway,
}

impl Gateway {
    /// Starts a gateway on `nats_url` with `extra` flags. Streams are on disk (the server's
    /// temporary store), so they survive a NATS restart as in production.
    pub async fn start(nats_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--nats-url", nats_url, "--log", "warn"];
        // Tests stop gateways often; the drain delay has its own test.
        if !extra.contains(&"--drain-delay") {
            args.extend(["--drain-delay", "0s"]);
        }
        args.extend_from_slice(extra);
        let inner = flotilla_fleet::Gateway::start(args)
            .await
            .expect("valid test config");
        Self {
            addr: inner.addr(),
            inner,
        }
    }

    /// Starts a gateway and waits until `/readyz` answers 200.
    pub async fn ready(nats_url: &str, extra: &[&str]) -> Self {
        let mut gw = Self::start(nats_url, extra).await;
        gw.wait_ready().await;
        gw
    }

    pub async fn wait_ready(&mut self) {
        self.inner.wait_ready(STEP).await.expect("gateway ready");
    }

    /// Resolves the shutdown future and returns what `run` returned.
    pub async fn stop(self) -> Result<(), GatewayError> {
        self.inner.stop(STEP).await.expect("run returned in time")
    }

    /// Waits for `run` to return without asking it to stop.
    pub async fn join(&mut self) -> Result<(), GatewayError> {
        self.inner.join(STEP).await.expect("run returned in time")
    }

    /// Asks `run` to stop, without waiting.
    pub fn trigger_shutdown(&mut self) {
        self.inner.shutdown();
    }
}

/// Waits until `cond` holds; panics after `STEP`.
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    flotilla_testsupport::wait_until_async(STEP, what, cond).await;
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::time::timeout(STEP, async {
        let stream = TcpStream::connect(addr).await.expect("connect gateway");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
    .expect("request answered in time")
}

/// Builds and sends a request with `headers` and `body`.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        addr,
        req.body(Full::new(Bytes::from_static(body)))
            .expect("request"),
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let r = call(addr, "GET", path, &[], b"").await;
    (r.status, r.text())
}

/// Every message in `stream`, read back as envelopes, without removing them.
pub async fn envelopes(client: &async_nats::Client, stream: &str) -> Vec<Envelope> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    let count = stream.info().await.expect("stream info").state.messages;
    let mut out = Vec::new();
    if count == 0 {
        return out;
    }
    // A work-queue stream allows one consumer per subject and wants explicit acks: read without
    // acking, then delete the reader so the next read (or a worker) may attach.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            name: Some("test-reader".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(count as usize)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    use futures_util::StreamExt;
    while let Some(msg) = batch.next().await {
        let msg = msg.expect("message");
        // `flotilla.call.<shard>.<function>`; the function may hold one '.'.
        let function = msg
            .subject
            .strip_prefix(subjects::CALL_SUBJECT_PREFIX)
            .and_then(|rest| rest[1..].split_once('.'))
            .and_then(|(_, f)| FunctionName::parse(f).ok())
            .expect("a call subject names its function");
        out.push(
            Envelope::from_nats(function, msg.headers.as_ref(), msg.payload.clone())
                .expect("envelope"),
        );
        if out.len() as u64 == count {
            break;
        }
    }
    drop(batch);
    stream
        .delete_consumer("test-reader")
        .await
        .expect("delete reader");
    out
}

/// Messages stored in `stream`.
pub async fn stream_len(client: &async_nats::Client, stream: &str) -> u64 {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}
