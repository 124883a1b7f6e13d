//! Mutation fuzzing of what Flotilla reads from the outside: the envelope decoder (every message
//! a worker pulls goes through it), function names and the subjects built from them, and report
//! batches. Inputs start from the corpus in `tests/corpus/` and are mutated by a seeded generator;
//! each target runs a bounded number of inputs within a bounded time, so the run is repeatable
//! and short. `FUZZ_SEED` and `FUZZ_ITERATIONS` widen a run by hand. Properties: nothing
//! panics; what decodes encodes back to the same thing.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use flotilla_queue::report::split_batch;
use flotilla_queue::{Envelope, FunctionName, subjects};

const TIME_LIMIT: Duration = Duration::from_secs(8);

fn iterations() -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f107);
    fastrand::Rng::with_seed(seed)
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file"))
        .collect()
}

/// Bytes that make parsers stumble: separators, digits, multi-byte characters, controls.
const INTERESTING: &[&[u8]] = &[
    b" ",
    b":",
    b"\n",
    b"\r\n",
    b"-",
    b"/",
    b"0",
    b"9",
    b"99999999999999999999",
    b"\xc3\xa9",
    b"\xff",
    b"\0",
    b"2 ",
    b"Flotilla-Call: ",
    b"Flotilla-Version: 1\n",
];

/// One mutation of `input`: flip, insert, delete, duplicate or splice.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let at = if out.is_empty() {
            0
        } else {
            rng.usize(..out.len())
        };
        match rng.u8(..6) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.u8(..8),
            1 => {
                let piece = INTERESTING[rng.usize(..INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + rng.usize(1..=8)).min(out.len());
                out.drain(at..end);
            }
            3 if !out.is_empty() => {
                let end = (at + rng.usize(1..=16)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            4 => {
                let other = &others[rng.usize(..others.len())];
                if !other.is_empty() {
                    let from = rng.usize(..other.len());
                    let end = (from + rng.usize(1..=32)).min(other.len());
                    out.splice(at..at, other[from..end].iter().copied());
                }
            }
            _ => out.push(rng.u8(..)),
        }
    }
    out
}

/// `Name: value` lines as NATS headers; lines NATS could not carry are left out.
fn headers(text: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in String::from_utf8_lossy(text).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            name.trim().parse::<async_nats::HeaderName>(),
            value.trim().parse::<async_nats::HeaderValue>(),
        ) else {
            continue;
        };
        h.append(name, value);
    }
    h
}

/// The seeds as they are, then mutations of them in turn, up to [`iterations`] inputs or
/// [`TIME_LIMIT`], whichever comes first.
fn inputs<'a>(
    seeds: &'a [Vec<u8>],
    rng: &'a mut fastrand::Rng,
) -> impl Iterator<Item = Vec<u8>> + 'a {
    let started = Instant::now();
    (0..iterations())
        .take_while(move |_| started.elapsed() < TIME_LIMIT)
        .map(move |i| {
            let seed = &seeds[i % seeds.len()];
            if i < seeds.len() {
                seed.clone()
            } else {
                mutate(rng, seed, seeds)
            }
        })
}

fn sorted(mut e: Envelope) -> Envelope {
    e.headers.sort();
    e
}

#[test]
fn the_envelope_decoder_never_panics_and_what_it_decodes_round_trips() {
    let seeds = corpus("envelope");
    let function = FunctionName::parse("resize").expect("valid");
    let mut decoded = 0;
    for input in inputs(&seeds, &mut rng()) {
        let h = headers(&input);
        let payload = Bytes::from(input.clone());
        let Ok(env) = Envelope::from_nats(function.clone(), Some(&h), payload) else {
            continue;
        };
        decoded += 1;
        let (h2, body) = env.to_nats(None);
        let again = Envelope::from_nats(function.clone(), Some(&h2), body)
            .unwrap_or_else(|e| panic!("re-encoded {env:?} does not decode: {e}"));
        assert_eq!(
            sorted(again),
            sorted(env),
            "input {:?}",
            String::from_utf8_lossy(&input)
        );
    }
    // The corpus's well-formed seeds decode, so the round trip was exercised.
    assert!(decoded >= 3, "only {decoded} inputs decoded");
    assert!(Envelope::from_nats(function, None, Bytes::new()).is_err());
}

#[test]
fn names_and_their_subjects_never_panic_and_round_trip() {
    let seeds: Vec<Vec<u8>> = corpus("names")
        .iter()
        .flat_map(|f| {
            f.split(|&b| b == b'\n')
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = rng();
    let mut valid = 0;
    for input in inputs(&seeds, &mut rng.clone()) {
        let raw = String::from_utf8_lossy(&input);
        let shard = rng.u32(..1024);
        // Any text may arrive as a subject: none of these may panic.
        let _ = subjects::function_of_any_subject(shard, &raw);
        let _ = subjects::function_of_subject(shard, &format!("flotilla.call.{shard}.{raw}"));
        let Ok(f) = FunctionName::parse(&raw) else {
            continue;
        };
        valid += 1;
        assert_eq!(FunctionName::parse(f.as_str()).as_ref(), Ok(&f));
        for (subject, back) in [
            (
                subjects::call_subject(shard, &f),
                subjects::function_of_subject as fn(u32, &str) -> _,
            ),
            (
                subjects::wait_subject(shard, &f),
                subjects::function_of_wait_subject,
            ),
            (
                subjects::retry_subject(shard, &f),
                subjects::function_of_retry_subject,
            ),
        ] {
            assert_eq!(back(shard, &subject).as_ref(), Some(&f), "{subject}");
        }
        assert!(!subjects::consumer_name(&f).contains('.'), "{f}");
    }
    assert!(valid >= 4, "only {valid} names were valid");
}

#[test]
fn report_batches_split_without_panicking() {
    let mut rng = rng();
    let seeds = vec![
        b"{\"call_id\":\"a\"}\n{\"call_id\":\"b\"}\n".to_vec(),
        b"\n\n".to_vec(),
    ];
    for i in 0..iterations().min(5_000) {
        let input = mutate(&mut rng, &seeds[i % seeds.len()], &seeds);
        for line in split_batch(&input) {
            assert!(!line.contains(&b'\n'));
            assert!(!line.iter().all(u8::is_ascii_whitespace));
        }
    }
}
