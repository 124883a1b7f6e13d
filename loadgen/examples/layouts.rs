//! Raw prototypes of the call layouts a fleet could use, measured side by side in one run: how
//! fast a backlog of calls spread over N functions drains (JetStream pull → HTTP POST → ack), with
//! no fleet code at all. The numbers behind the layout chosen in `docs/ARCHITECTURE.md`.
//!
//! Layouts, each draining the same interleaved backlog under the same cap of calls in flight:
//! - `single`: one subject, one consumer (the ceiling; the function count does not apply).
//! - `per-function`: one stream, one filtered durable consumer per function (the layout of
//!   Flotilla 0.1).
//! - `streams/4`: a stream for every four functions, one filtered consumer per function.
//! - `streams/1`: a stream per function, one consumer each (nothing to skip).
//! - `dispatch`: one stream, one unfiltered consumer, calls dispatched per function in the
//!   process.
//!
//! `cargo run --release -p flotilla-loadgen --example layouts -- [functions,..] [messages] [in-flight]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use flotilla_loadgen::ceiling::{self, PerFunction};
use flotilla_loadgen::net;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Js = jetstream::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Single,
    PerFunction,
    StreamsPer4,
    StreamsPer1,
    Dispatch,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::PerFunction => "per-function",
            Layout::StreamsPer4 => "streams/4",
            Layout::StreamsPer1 => "streams/1",
            Layout::Dispatch => "dispatch",
        }
    }
    /// How many streams the layout spreads `functions` over.
    fn streams(self, functions: usize) -> usize {
        match self {
            Layout::Single | Layout::PerFunction | Layout::Dispatch => 1,
            Layout::StreamsPer4 => functions.div_ceil(4),
            Layout::StreamsPer1 => functions,
        }
    }
}

fn stream_name(i: usize) -> String {
    format!("PROTO_{i}")
}

fn subject(stream: usize, function: usize) -> String {
    format!("proto.{stream}.f{function}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counts: Vec<usize> = args
        .first()
        .map_or("1,8,32,200,1000", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let messages: usize = args.get(1).map_or(Ok(60_000), |s| s.parse())?;
    let in_flight: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(1), |s| s.parse())?;

    let server = flotilla_testsupport::NatsServer::start();
    let nats = server.client().await;
    let js = jetstream::new(nats);

    let stop = CancellationToken::new();
    let bare = TcpListener::bind("127.0.0.1:0").await?;
    let uri: http::Uri = format!("http://{}/", bare.local_addr()?).parse()?;
    net::serve_bare(bare, stop.clone());
    let client = net::client();

    println!(
        "{messages} calls of 256 B, {in_flight} in flight, file storage; calls/s and ratio to `single`"
    );
    println!("| functions | layout | calls/s | ratio |");
    println!("|---:|---|---:|---:|");
    for &n in &counts {
        for _ in 0..rounds {
            let single = drain(&js, &client, &uri, Layout::Single, 1, messages, in_flight).await?;
            for layout in [
                Layout::PerFunction,
                Layout::StreamsPer4,
                Layout::StreamsPer1,
                Layout::Dispatch,
            ] {
                let rate = drain(&js, &client, &uri, layout, n, messages, in_flight).await?;
                println!(
                    "| {n} | {} | {rate:.0} | {:.2} |",
                    layout.name(),
                    rate / single
                );
            }
            println!("| {n} | single | {single:.0} | 1.00 |");
        }
    }
    stop.cancel();
    Ok(())
}

/// Fills the layout's streams with `messages` calls interleaved over `functions`, then drains
/// them and returns calls per second. The layouts with a consumer per function are the loadgen's
/// own per-function ceiling; `dispatch` is measured here.
async fn drain(
    js: &Js,
    client: &net::HttpClient,
    uri: &http::Uri,
    layout: Layout,
    functions: usize,
    messages: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let body = Bytes::from(vec![b'c'; 256]);
    if layout != Layout::Dispatch {
        let shape = PerFunction {
            backlog: messages as u64,
            functions: if layout == Layout::Single {
                1
            } else {
                functions
            },
            streams: layout.streams(functions),
            concurrency: in_flight,
        };
        return Ok(ceiling::pull_post_ack_per_function(
            js,
            stream::StorageType::File,
            client,
            uri,
            &body,
            shape,
        )
        .await?);
    }
    let _ = js.delete_stream(stream_name(0)).await;
    js.create_stream(stream::Config {
        name: stream_name(0),
        subjects: vec!["proto.0.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    ceiling::fill(js, messages as u64, &body, |i| {
        subject(0, i as usize % functions)
    })
    .await?;

    let done = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(in_flight));
    let tracker = TaskTracker::new();
    let start = Instant::now();
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream_name(0))
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("all".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: in_flight as i64,
            ..Default::default()
        })
        .await?;
    // A per-function slot table consulted for every call, as a worker would.
    let per_function: Vec<Arc<Semaphore>> = (0..functions)
        .map(|_| Arc::new(Semaphore::new(100)))
        .collect();
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(in_flight)
        .messages()
        .await?;
    let mut taken = 0;
    while taken < messages {
        let Some(Ok(msg)) = msgs.next().await else {
            break;
        };
        taken += 1;
        let global = slots.clone().acquire_owned().await?;
        let f: usize = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|s| s.strip_prefix('f'))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let local = per_function[f % functions].clone().acquire_owned().await?;
        spawn_call(&tracker, client, uri, &done, msg, (global, local));
    }
    tracker.close();
    tokio::time::timeout(Duration::from_secs(600), tracker.wait()).await?;
    let elapsed = start.elapsed();
    let _ = js.delete_stream(stream_name(0)).await;
    let done = done.load(Ordering::Relaxed) as usize;
    anyhow::ensure!(done == messages, "dispatch drained {done} of {messages}");
    Ok(done as f64 / elapsed.as_secs_f64())
}

fn spawn_call(
    tracker: &TaskTracker,
    client: &net::HttpClient,
    uri: &http::Uri,
    done: &Arc<AtomicU64>,
    msg: jetstream::Message,
    permits: (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
) {
    let (client, uri, done) = (client.clone(), uri.clone(), done.clone());
    tracker.spawn(async move {
        let req = hyper::Request::post(uri)
            .header("content-type", "application/octet-stream")
            .body(Full::new(msg.payload.clone()))
            .expect("static request parts are valid");
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
            if msg.ack().await.is_ok() {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(permits);
    });
}
