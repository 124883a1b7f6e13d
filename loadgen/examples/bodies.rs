//! The yardstick of large bodies: what the same libraries do with no fleet code, for bodies
//! larger than one NATS message. Each of `concurrency` loops POSTs a body to a bare server that
//! stores it in a JetStream object store and answers; then reads it back, POSTs it to a bare
//! function, and removes it. That is the I/O a large-body call costs the fleet (two HTTP
//! transfers, one object written, read and removed), so the fleet's rate at the same size is read
//! as a ratio to this one.
//!
//! `cargo run --release -p flotilla-loadgen --example bodies -- [MiB] [concurrency] [seconds]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use flotilla_loadgen::net;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map_or(Ok(4), |s| s.parse())?;
    let concurrency: usize = args.get(1).map_or(Ok(4), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let nats = flotilla_loadgen::ceiling::start_nats().await?;
    let js = jetstream::new(nats.client().await?);
    let bucket = js
        .create_object_store(object_store::Config {
            bucket: "PROTO_BODIES".into(),
            ..Default::default()
        })
        .await?;
    let stop = CancellationToken::new();

    // The bare function: drains the body.
    let function = TcpListener::bind("127.0.0.1:0").await?;
    let function_uri: Uri = format!("http://{}/", function.local_addr()?).parse()?;
    net::serve_bare(function, stop.clone());
    // The bare front: stores the body as an object named by the path.
    let front = TcpListener::bind("127.0.0.1:0").await?;
    let front_addr = front.local_addr()?;
    let store = bucket.clone();
    net::serve(
        front,
        stop.clone(),
        move |req: hyper::Request<hyper::body::Incoming>| {
            let store = store.clone();
            async move {
                let name = req.uri().path().trim_start_matches('/').to_owned();
                let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                    return net::respond(400, Bytes::new());
                };
                let mut reader: &[u8] = &body;
                match store.put(name.as_str(), &mut reader).await {
                    Ok(_) => net::respond(202, Bytes::new()),
                    Err(_) => net::respond(503, Bytes::new()),
                }
            }
        },
    );

    let body = Bytes::from(vec![b'b'; mib << 20]);
    let client = net::client();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut loops = Vec::new();
    for i in 0..concurrency {
        let (client, body, bucket, done) =
            (client.clone(), body.clone(), bucket.clone(), done.clone());
        let function_uri = function_uri.clone();
        loops.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let name = format!("b-{i}-{n}");
                n += 1;
                let front_uri: Uri = format!("http://{front_addr}/{name}").parse()?;
                let req = hyper::Request::post(front_uri).body(Full::new(body.clone()))?;
                let resp = client.request(req).await?;
                let _ = resp.into_body().collect().await;
                let mut object = bucket.get(&name).await?;
                let mut read = Vec::with_capacity(body.len());
                object.read_to_end(&mut read).await?;
                let req = hyper::Request::post(function_uri.clone())
                    .body(Full::new(Bytes::from(read)))?;
                let resp = client.request(req).await?;
                let _ = resp.into_body().collect().await;
                bucket.delete(&name).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for l in loops {
        l.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    println!(
        "{mib} MiB bodies, {concurrency} in flight: {:.1} calls/s ({:.0} MiB/s), POST → object put → get → POST → delete",
        n / elapsed,
        n * mib as f64 / elapsed
    );
    stop.cancel();
    Ok(())
}
