//! What call status takes from nats-server, per call, for the two layouts the fleet keeps:
//! status pages (numbered calls, many records a message) and a record per call (ids a client
//! chose). Each layout gets a nats-server of its own; the calls' records are written through the
//! fleet's own `Store` as a gateway and a worker would (`queued`, then `succeeded`), nothing is
//! pushed out (a budget far above what is written), and the server's resident memory (`VmRSS`)
//! and the stream's bytes are read before and after. Also the rate the records were written at.
//!
//! `cargo run --release -p flotilla-loadgen --example status_memory -- [calls]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_fleet::NatsServer;
use flotilla_queue::status::pages::{CallIds, Guard, page_of};
use flotilla_queue::status::{CallState, Record, Store};
use flotilla_queue::topology::{StatusBudget, StreamSettings, Topology};
use tokio::sync::Semaphore;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Calls written at once, as many as a busy fleet has in flight.
const IN_FLIGHT: usize = 2_048;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Pages,
    PerCall,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300_000);
    println!("| layout | calls | records/s | nats-server RSS per call | stream bytes per call |");
    println!("|---|---:|---:|---:|---:|");
    for layout in [Layout::Pages, Layout::PerCall] {
        let m = measure(layout, calls).await?;
        println!(
            "| {} | {calls} | {:.0} | {:.0} B | {:.0} B |",
            match layout {
                Layout::Pages => "status pages",
                Layout::PerCall => "a record per call",
            },
            m.rate,
            m.rss_per_call,
            m.bytes_per_call
        );
    }
    Ok(())
}

struct Measured {
    rate: f64,
    rss_per_call: f64,
    bytes_per_call: f64,
}

async fn measure(layout: Layout, calls: usize) -> Result<Measured, Error> {
    let server = NatsServer::launch().await?;
    let pid = server.pid().ok_or("nats-server has no pid")?;
    let client = server.client().await?;
    let js = async_nats::jetstream::new(client);
    let settings = StreamSettings {
        status_budget: StatusBudget { bytes: 16 << 30 },
        ..StreamSettings::default()
    };
    Topology { shards: 1 }
        .ensure_streams(&js, &settings)
        .await?;
    let store = Arc::new(Store::new(js.clone()).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_bytes(pid)?;
    let ids = CallIds::new();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..calls {
        let permit = permits.clone().acquire_owned().await?;
        let store = store.clone();
        let id = match layout {
            Layout::Pages => ids.next(),
            Layout::PerCall => format!("client-chosen-{n}"),
        };
        tasks.spawn(async move {
            let _permit = permit;
            write_call(&store, &id, layout).await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = (2 * calls) as f64 / started.elapsed().as_secs_f64();
    // Let the file store write its blocks and drop its caches of them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_bytes(pid)?;
    let stream = match layout {
        Layout::Pages => flotilla_queue::status::pages::PAGE_STREAM,
        Layout::PerCall => flotilla_queue::status::STATUS_STREAM,
    };
    let bytes = js.get_stream(stream).await?.info().await?.state.bytes;
    Ok(Measured {
        rate,
        rss_per_call: rss_after.saturating_sub(rss_before) as f64 / calls as f64,
        bytes_per_call: bytes as f64 / calls as f64,
    })
}

/// A call's two records, as the gateway and a worker write them.
async fn write_call(store: &Store, id: &str, layout: Layout) -> Result<(), Error> {
    let accepted = flotilla_queue::time::unix_nanos();
    let queued = Record::queued(id, "echo", accepted, None);
    let mut done = queued.clone();
    done.state = CallState::Succeeded;
    done.attempts = 1;
    done.status = Some(200);
    done.updated_at = accepted + 1_000_000;
    match layout {
        Layout::Pages => {
            let page = page_of(id).ok_or("not a numbered id")?;
            store.write_paged(page, &queued, Guard::None).await?;
            store.write_paged(page, &done, Guard::Cancels).await?;
        }
        Layout::PerCall => {
            let revision = store
                .write(&queued, 0)
                .await?
                .ok_or("record already there")?;
            store
                .write(&done, revision)
                .await?
                .ok_or("record changed")?;
        }
    }
    Ok(())
}

fn rss_bytes(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no VmRSS")?
        .parse::<u64>()?;
    Ok(kib * 1024)
}
