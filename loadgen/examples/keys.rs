//! Fairness keys, raw: what starting calls round-robin across keys costs JetStream, against one
//! consumer reading calls in arrival order (what a function's calls cost today). No Flotilla
//! code: the same nats-server and client library, 256-byte calls, pulls acked as they arrive.
//!
//! The layout measured ("claim"): every waiting call is kept in a limits stream under its key's
//! subject (`kq.<key>`); a puller keeps a ring of the keys with calls and, for each call it can
//! start, takes the next key's oldest call (a direct get by subject), copies it into a work-queue
//! stream the function's consumer reads (de-duplicated on the original's sequence, so two pullers
//! claiming the same call make one copy) and deletes the original. One claim in flight per key,
//! at most 256 in all. The round-robin comes from the ring, so the cost per call does not depend
//! on how many keys there are; what it adds is a direct get, a publish and a delete per call.
//!
//! `cargo run --release -p flotilla-loadgen --example keys -- [calls] [keys,...]`

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use flotilla_fleet::NatsServer;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

type Error = Box<dyn std::error::Error + Send + Sync>;

const CLAIMS_IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(60_000);
    let keys: Vec<u64> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1_000, 10_000],
    };
    println!("| layout | keys | calls | calls/s | ratio to one consumer |");
    println!("|---|---:|---:|---:|---:|");
    let one = one_consumer(calls).await?;
    println!("| one consumer, arrival order | - | {calls} | {one:.0} | 1.00 |");
    for k in keys {
        let rate = claim(calls, k).await?;
        println!(
            "| claim round-robin | {k} | {calls} | {rate:.0} | {:.2} |",
            rate / one
        );
    }
    Ok(())
}

async fn context() -> Result<(NatsServer, jetstream::Context), Error> {
    let server = NatsServer::launch().await?;
    let js = jetstream::new(server.client().await?);
    js.create_stream(stream::Config {
        name: "READY".into(),
        subjects: vec!["ready".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    Ok((server, js))
}

/// Publishes `n` calls, `subject(i)` each, PubAcks pipelined 1,000 at a time.
async fn publish(
    js: &jetstream::Context,
    n: u64,
    subject: impl Fn(u64) -> String,
) -> Result<(), Error> {
    let body = Bytes::from(vec![b'x'; 256]);
    let mut acks = Vec::with_capacity(1_000);
    for i in 0..n {
        acks.push(js.publish(subject(i), body.clone()).await?);
        if acks.len() == 1_000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Reads `n` calls from the READY stream and acks each; resolves once the stream is empty.
async fn drain(js: jetstream::Context, n: u64) -> Result<(), Error> {
    let s = js.get_stream("READY").await?;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("function".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let mut messages = c.messages().await?;
    let mut seen = 0;
    while seen < n {
        let Some(m) = messages.next().await else {
            return Err("the consumer's messages ended".into());
        };
        m.map_err(|e| e.to_string())?
            .ack()
            .await
            .map_err(|e| e.to_string())?;
        seen += 1;
    }
    let mut s = js.get_stream("READY").await?;
    while s.info().await?.state.messages > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Today's cost: calls in arrival order under one subject, one consumer.
async fn one_consumer(n: u64) -> Result<f64, Error> {
    let (_server, js) = context().await?;
    publish(&js, n, |_| "ready".into()).await?;
    let started = Instant::now();
    drain(js, n).await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Round-robin across `k` keys by claiming each key's oldest call into READY.
async fn claim(n: u64, k: u64) -> Result<f64, Error> {
    let (_server, js) = context().await?;
    let keyq = js
        .create_stream(stream::Config {
            name: "KEYQ".into(),
            subjects: vec!["kq.*".into()],
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    publish(&js, n, |i| format!("kq.{}", i % k)).await?;
    let started = Instant::now();
    let drained = tokio::spawn(drain(js.clone(), n));
    let claimed = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT));
    let (back, mut returned) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    // The ring: keys with calls, each with the sequence to look from.
    let mut ring: VecDeque<(u64, u64)> = (0..k).map(|key| (key, 0)).collect();
    while claimed.load(Ordering::Relaxed) < n {
        while let Ok(next) = returned.try_recv() {
            ring.push_back(next);
        }
        let Some((key, from)) = ring.pop_front() else {
            match returned.recv().await {
                Some(next) => ring.push_back(next),
                None => break,
            }
            continue;
        };
        let permit = permits.clone().acquire_owned().await?;
        let (js, keyq, back, claimed) = (js.clone(), keyq.clone(), back.clone(), claimed.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let subject = format!("kq.{key}");
            let Ok(m) = keyq.direct_get_next_for_subject(&subject, Some(from)).await else {
                // The key has nothing left: it leaves the ring.
                return;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("claim:{}", m.sequence).as_str());
            let copied = async {
                js.publish_with_headers("ready", headers, m.payload)
                    .await?
                    .await?;
                let _: serde_json::Value = js
                    .request(
                        "STREAM.MSG.DELETE.KEYQ".to_owned(),
                        &serde_json::json!({ "seq": m.sequence, "no_erase": true }),
                    )
                    .await?;
                Ok::<_, Error>(())
            };
            // A claim that failed is tried again from the same call.
            let next = match copied.await {
                Ok(()) => {
                    claimed.fetch_add(1, Ordering::Relaxed);
                    m.sequence + 1
                }
                Err(_) => from,
            };
            let _ = back.send((key, next));
        });
    }
    drop(back);
    drained.await??;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
