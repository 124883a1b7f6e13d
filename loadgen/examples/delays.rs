//! Two ways to make a call wait for its start time, measured side by side in one run with no
//! fleet code: how late a burst of messages, all due at the same moment, comes out of each.
//! - `retry storage` (what Flotilla does): the messages wait in a work-queue stream; one pull
//!   consumer hands each back with `Nak(remaining)` until it is due, then republishes it to the
//!   due subject and acks it.
//! - `message schedules` (NATS 2.12): each message is published to a subject of its own with
//!   `Nats-Schedule: @at <time>` and `Nats-Schedule-Target`; the server publishes it when due.
//!
//! Arrival is read from the due subject through a consumer in both cases.
//!
//! `cargo run --release -p flotilla-loadgen --example delays -- [messages] [seconds ahead]`

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(20_000), |s| s.parse())?;
    let ahead: u64 = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let nats = flotilla_loadgen::ceiling::start_nats().await?;
    let client = nats.client().await?;
    let js = jetstream::new(client);
    println!("{n} messages, all due {ahead} s after the run starts its publishes");
    for (name, lateness) in [
        ("retry storage", retry_storage(&js, n, ahead).await?),
        ("message schedules", schedules(&js, n, ahead).await?),
    ] {
        print(name, lateness);
    }
    Ok(())
}

fn print(name: &str, mut late_ms: Vec<f64>) {
    late_ms.sort_by(f64::total_cmp);
    let at = |q: f64| late_ms[((late_ms.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<18} arrived {:>6}  late p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        late_ms.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The due moment `ahead` seconds from now, as an instant and as RFC 3339 (whole seconds: a
/// schedule's `@at` is read to the second).
fn due(ahead: u64) -> (Instant, String) {
    let now = SystemTime::now();
    let at = OffsetDateTime::from(now) + time::Duration::seconds(ahead as i64);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    let wait = Duration::try_from(at - OffsetDateTime::from(now)).unwrap_or_default();
    (
        Instant::now() + wait,
        at.format(&Rfc3339).unwrap_or_default(),
    )
}

/// Reads `n` messages of `subject` from `stream` as they arrive; how late each was, in ms.
async fn arrivals(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    n: usize,
    due: Instant,
) -> anyhow::Result<Vec<f64>> {
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.into(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut late = Vec::with_capacity(n);
    let deadline = due + Duration::from_secs(120);
    while late.len() < n && Instant::now() < deadline {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await
        else {
            break;
        };
        m?;
        let now = Instant::now();
        late.push(now.saturating_duration_since(due).as_secs_f64() * 1000.0);
    }
    Ok(late)
}

async fn retry_storage(js: &jetstream::Context, n: usize, ahead: u64) -> anyhow::Result<Vec<f64>> {
    js.create_stream(stream::Config {
        name: "PROTO_WAIT".into(),
        subjects: vec!["proto.wait".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    js.create_stream(stream::Config {
        name: "PROTO_DUE".into(),
        subjects: vec!["proto.due".into()],
        ..Default::default()
    })
    .await?;
    let (due_at, _) = due(ahead);
    let due_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_nanos()
        + due_at.saturating_duration_since(Instant::now()).as_nanos();
    flotilla_loadgen::ceiling::fill(js, n as u64, &"x".into(), |_| "proto.wait".into()).await?;
    let consumer: consumer::PullConsumer = js
        .get_stream("PROTO_WAIT")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("waits".into()),
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let relay = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(512)
                .messages()
                .await?;
            let moves = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
            let mut moved = 0;
            while moved < n {
                let Some(m) = messages.next().await else {
                    break;
                };
                let m = m?;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)?
                    .as_nanos();
                if now + 5_000_000 < due_unix {
                    let left = Duration::from_nanos((due_unix - now) as u64);
                    let _ = m.ack_with(AckKind::Nak(Some(left))).await;
                    continue;
                }
                // Moves run 64 at a time, as Flotilla's retry loop runs them.
                let permit = moves.clone().acquire_owned().await?;
                let ack = js.publish("proto.due", m.payload.clone()).await?;
                tokio::spawn(async move {
                    if ack.await.is_ok() {
                        let _ = m.ack().await;
                    }
                    drop(permit);
                });
                moved += 1;
            }
            anyhow::Ok(())
        })
    };
    let late = arrivals(js, "PROTO_DUE", "proto.due", n, due_at).await?;
    relay.abort();
    Ok(late)
}

async fn schedules(js: &jetstream::Context, n: usize, ahead: u64) -> anyhow::Result<Vec<f64>> {
    js.create_stream(stream::Config {
        name: "PROTO_SCHED".into(),
        subjects: vec!["proto.sched.>".into(), "proto.sdue".into()],
        allow_message_schedules: true,
        ..Default::default()
    })
    .await?;
    let (due_at, at) = due(ahead);
    let mut window = Vec::with_capacity(1024);
    for i in 0..n {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Schedule", format!("@at {at}").as_str());
        h.insert("Nats-Schedule-Target", "proto.sdue");
        window.push(
            js.publish_with_headers(format!("proto.sched.{i}"), h, "x".into())
                .await?,
        );
        if window.len() == 1024 || i + 1 == n {
            for ack in window.drain(..) {
                ack.await?;
            }
        }
    }
    arrivals(js, "PROTO_SCHED", "proto.sdue", n, due_at).await
}
