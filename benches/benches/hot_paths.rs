//! The per-call work outside the envelope: which shard a name maps to, which request headers are
//! dropped, and building the worker's HTTP request to the function from an envelope. Each runs
//! once or more per call, so each must stay far below the microseconds a call costs end to end.

use flotilla_benches::sample_call;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flotilla_queue::envelope::is_dropped_header;
use flotilla_queue::headers::{X_CALL_ID, X_START_TIME};
use flotilla_queue::policy::DEFAULT_URL_TEMPLATE;
use flotilla_queue::subjects::call_subject;
use flotilla_queue::{Envelope, FunctionName, FunctionPolicy, Policies, ShardMap};
use http_body_util::Full;

fn shard_map(c: &mut Criterion) {
    let names: Vec<String> = (0..1000).map(|i| format!("function-{i}.team")).collect();
    let mut g = c.benchmark_group("shard_map");
    g.throughput(Throughput::Elements(names.len() as u64));
    for shards in [4u32, 64] {
        let map = ShardMap::new(shards);
        g.bench_function(BenchmarkId::new("shard_of", shards), |b| {
            b.iter(|| {
                names
                    .iter()
                    .map(|n| map.shard_of(black_box(n)))
                    .fold(0u32, u32::wrapping_add)
            })
        });
    }
    let parsed: Vec<FunctionName> = names
        .iter()
        .map(|n| FunctionName::parse(n).expect("valid"))
        .collect();
    let map = ShardMap::new(4);
    g.bench_function("shard_and_subject", |b| {
        b.iter(|| {
            parsed
                .iter()
                .map(|f| call_subject(map.shard_of(f.as_str()), black_box(f)).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

/// A browser-ish request's headers plus a few that must be dropped.
const REQUEST_HEADERS: &[&str] = &[
    "Host",
    "User-Agent",
    "Accept",
    "Accept-Encoding",
    "Content-Type",
    "Content-Length",
    "Connection",
    "X-Callback-Url",
    "X-Request-Id",
    "Authorization",
    "Nats-Msg-Id",
    "Flotilla-Call",
    "Traceparent",
    "X-Forwarded-For",
];

fn header_filter(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_filter");
    g.throughput(Throughput::Elements(REQUEST_HEADERS.len() as u64));
    g.bench_function("is_dropped_header", |b| {
        b.iter(|| {
            REQUEST_HEADERS
                .iter()
                .filter(|h| !is_dropped_header(black_box(h)))
                .count()
        })
    });
    g.finish();
}

/// What the worker does before handing a call to the pooled client.
fn build_request(policies: &Policies, e: &Envelope) -> hyper::Request<Full<Bytes>> {
    let url = policies.url_for(&e.function, &e.path, &e.query);
    let mut req = hyper::Request::builder().method(e.method.as_str()).uri(url);
    for (k, v) in &e.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.header(X_CALL_ID, e.call_id.as_str())
        .header(X_START_TIME, e.start_time.to_string())
        .body(Full::new(e.body.clone()))
        .expect("valid request")
}

fn request_building(c: &mut Criterion) {
    let policies =
        Policies::new(FunctionPolicy::default(), DEFAULT_URL_TEMPLATE).expect("valid policies");
    let e = sample_call(4096);
    let mut g = c.benchmark_group("request_building");
    g.throughput(Throughput::Elements(1));
    g.bench_function("url_for", |b| {
        b.iter(|| policies.url_for(black_box(&e.function), &e.path, &e.query))
    });
    g.bench_function("hyper_request", |b| {
        b.iter(|| build_request(&policies, black_box(&e)))
    });
    g.finish();
}

criterion_group!(benches, shard_map, header_filter, request_building);
criterion_main!(benches);
