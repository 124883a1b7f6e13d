//! Why the envelope is NATS headers plus the raw body: this bench encodes and decodes the same
//! call both ways (and a JSON envelope with a byte-array body, the naive serde shape) at 256 B,
//! 4 KiB and 64 KiB bodies. Numbers and the decision are in `docs/benchmarks.md`.
//!
//! To be fair to JSON, the NATS side includes the header block's wire framing
//! (`NATS/1.0\r\nName: value\r\n...\r\n`) that async-nats writes on publish and parses on
//! receive; the JSON side is complete once `serde_json` is done.
//!
//! `nats_headers_v1` is the envelope's first wire form, one `Flotilla-*` header per control
//! field, kept here (and still decoded by `Envelope::from_nats`) to show what packing the
//! control fields into one `Flotilla-Call` header saved.

use flotilla_benches::sample_call;
use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flotilla_queue::envelope::v1;
use flotilla_queue::{Envelope, FunctionName};
use serde::{Deserialize, Serialize};

const SIZES: [(usize, &str); 3] = [(256, "256B"), (4096, "4KiB"), (65536, "64KiB")];

/// The JSON alternative: the same fields in one document. The body is base64 text
/// (`JsonEnvelope<String>`) or, the naive serde shape, an array of numbers (`JsonEnvelope<Vec<u8>>`).
#[derive(Serialize, Deserialize)]
struct JsonEnvelope<B> {
    call_id: String,
    function: String,
    method: String,
    path: String,
    query: String,
    callback_url: Option<String>,
    start_time: u64,
    attempt: u32,
    headers: Vec<(String, String)>,
    body: B,
}

/// The header block as async-nats frames it on the wire.
fn frame_headers(h: &async_nats::HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"NATS/1.0\r\n");
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        for v in values {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(v.as_str().as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The header block parsed back, as async-nats does on receive.
fn parse_headers(block: &[u8]) -> async_nats::HeaderMap {
    let text = std::str::from_utf8(block).expect("utf-8 headers");
    let mut h = async_nats::HeaderMap::new();
    for line in text.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            h.append(name, value.trim());
        }
    }
    h
}

fn nats_encode(e: &Envelope) -> (Bytes, Bytes) {
    let (h, body) = e.to_nats(Some(&e.call_id));
    (frame_headers(&h), body)
}

/// `function` comes from the message's subject, as the worker's consumer knows it.
fn nats_decode(function: &FunctionName, block: &[u8], body: Bytes) -> Envelope {
    let h = parse_headers(block);
    Envelope::from_nats(function.clone(), Some(&h), body).expect("valid envelope")
}

/// Version 1: one header per control field, as `to_nats` wrote them before.
fn nats_encode_v1(e: &Envelope) -> (Bytes, Bytes) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(v1::H_VERSION, v1::VERSION);
    h.insert(v1::H_CALL_ID, e.call_id.as_str());
    h.insert(v1::H_FUNCTION, e.function.as_str());
    h.insert(v1::H_METHOD, e.method.as_str());
    h.insert(v1::H_PATH, e.path.as_str());
    h.insert(v1::H_QUERY, e.query.as_str());
    if let Some(cb) = &e.callback_url {
        h.insert(v1::H_CALLBACK_URL, cb.as_str());
    }
    h.insert(v1::H_START_TIME, e.start_time.to_string().as_str());
    h.insert("Nats-Msg-Id", e.call_id.as_str());
    for (k, v) in &e.headers {
        h.append(k.as_str(), v.as_str());
    }
    (frame_headers(&h), e.body.clone())
}

fn to_json<B>(e: &Envelope, body: B) -> JsonEnvelope<B> {
    JsonEnvelope {
        call_id: e.call_id.clone(),
        function: e.function.as_str().to_owned(),
        method: e.method.clone(),
        path: e.path.clone(),
        query: e.query.clone(),
        callback_url: e.callback_url.clone(),
        start_time: e.start_time as u64,
        attempt: e.attempt,
        headers: e.headers.clone(),
        body,
    }
}

fn from_json<B>(j: JsonEnvelope<B>, body: impl FnOnce(B) -> Bytes) -> Envelope {
    Envelope {
        call_id: j.call_id,
        function: FunctionName::parse(&j.function).expect("valid"),
        method: j.method,
        path: j.path,
        query: j.query,
        callback_url: j.callback_url,
        start_time: u128::from(j.start_time),
        attempt: j.attempt,
        headers: j.headers,
        body: body(j.body),
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    }
}

fn json_encode(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(&to_json(e, B64.encode(&e.body))).expect("serialize")
}

fn json_decode(raw: &[u8]) -> Envelope {
    let j: JsonEnvelope<String> = serde_json::from_slice(raw).expect("deserialize");
    from_json(j, |b| Bytes::from(B64.decode(b).expect("base64")))
}

fn json_bytes_encode(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(&to_json(e, e.body.to_vec())).expect("serialize")
}

fn json_bytes_decode(raw: &[u8]) -> Envelope {
    let j: JsonEnvelope<Vec<u8>> = serde_json::from_slice(raw).expect("deserialize");
    from_json(j, Bytes::from)
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_encode");
    for (size, label) in SIZES {
        let e = sample_call(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("nats_headers", label), &e, |b, e| {
            b.iter(|| nats_encode(black_box(e)))
        });
        g.bench_with_input(BenchmarkId::new("nats_headers_v1", label), &e, |b, e| {
            b.iter(|| nats_encode_v1(black_box(e)))
        });
        g.bench_with_input(BenchmarkId::new("json_base64", label), &e, |b, e| {
            b.iter(|| json_encode(black_box(e)))
        });
        g.bench_with_input(BenchmarkId::new("json_byte_array", label), &e, |b, e| {
            b.iter(|| json_bytes_encode(black_box(e)))
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_decode");
    for (size, label) in SIZES {
        let e = sample_call(size);
        let (block, body) = nats_encode(&e);
        let mut back = nats_decode(&e.function, &block, body.clone());
        // NATS keeps the order of one header's values, not the order between names.
        back.headers.sort();
        let mut want = e.clone();
        want.headers.sort();
        assert_eq!(back, want);
        let (block_v1, _) = nats_encode_v1(&e);
        assert_eq!(
            nats_decode(&e.function, &block_v1, body.clone()).call_id,
            e.call_id
        );
        let json = json_encode(&e);
        assert_eq!(json_decode(&json).body, e.body);
        let json_bytes = json_bytes_encode(&e);
        assert_eq!(json_bytes_decode(&json_bytes).body, e.body);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("nats_headers", label), |b| {
            b.iter(|| nats_decode(&e.function, black_box(&block), body.clone()))
        });
        g.bench_function(BenchmarkId::new("nats_headers_v1", label), |b| {
            b.iter(|| nats_decode(&e.function, black_box(&block_v1), body.clone()))
        });
        g.bench_function(BenchmarkId::new("json_base64", label), |b| {
            b.iter(|| json_decode(black_box(&json)))
        });
        g.bench_function(BenchmarkId::new("json_byte_array", label), |b| {
            b.iter(|| json_bytes_decode(black_box(&json_bytes)))
        });
    }
    g.finish();
}

/// Bytes each encoding puts on the wire per call, printed once so the docs can quote them.
fn wire_sizes(_: &mut Criterion) {
    for (size, label) in SIZES {
        let e = sample_call(size);
        let (block, body) = nats_encode(&e);
        println!(
            "wire size {label}: nats_headers {} B, nats_headers_v1 {} B, json_base64 {} B, json_byte_array {} B",
            block.len() + body.len(),
            nats_encode_v1(&e).0.len() + body.len(),
            json_encode(&e).len(),
            json_bytes_encode(&e).len()
        );
    }
}

criterion_group!(benches, wire_sizes, encode, decode);
criterion_main!(benches);
