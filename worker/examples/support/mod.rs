//! What the worker's examples share: a fleet (nats-server with the topology agreed; workers join
//! later), a function server that answers 200 and counts, and a backlog filler that keeps a window
//! of PubAcks in flight.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use flotilla_fleet::{Fleet, FleetOptions};
use flotilla_queue::Envelope;
use http_body_util::{BodyExt, Empty};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A nats-server with `shards` agreed and the streams created; its workers call `function_url`.
pub async fn fleet(shards: u32, function_url: &str) -> Fleet {
    Fleet::start(FleetOptions {
        shards,
        function_url_template: Some(function_url.to_owned()),
        ..FleetOptions::default()
    })
    .await
    .unwrap()
}

/// A function (or callback sink) that answers 200 after `latency` and counts its calls.
pub async fn counting_server(latency: Duration) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let c = c.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let c = c.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        c.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (url, count)
}

/// Publishes `n` copies of `env` (call ids `c-0`, `c-1`, …) to `subject`, 1,024 PubAcks at a time.
pub async fn fill(js: &jetstream::Context, subject: &str, env: &Envelope, n: u64) {
    let mut window = Vec::with_capacity(1024);
    for i in 0..n {
        let mut e = env.clone();
        e.call_id = format!("c-{i}");
        let (h, b) = e.to_nats(None);
        window.push(
            js.publish_with_headers(subject.to_owned(), h, b)
                .await
                .unwrap(),
        );
        if window.len() == 1024 {
            for a in window.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in window.drain(..) {
        a.await.unwrap();
    }
}
