//! The SVG writer must produce a document any viewer opens: well-formed XML (every element
//! closed, attributes quoted, text escaped), no NaN or infinite coordinates, both panels drawn.

use flotilla_loadgen::plot::{PlotInput, svg};
use flotilla_loadgen::stats::latency_histogram;

/// A small well-formedness check: tags nest and close, attribute values are quoted.
fn check_well_formed(doc: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        let end = rest[start..].find('>').expect("unterminated tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(open, name.trim(), "mismatched close");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name = body.split_whitespace().next().expect("tag name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-'),
            "bad tag name {name:?}"
        );
        // Attribute values come in double quotes: an even number of them.
        assert_eq!(
            body.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{body}>"
        );
        if !self_closing {
            stack.push(name.to_owned());
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(!rest.contains('<'));
}

#[test]
fn writes_a_well_formed_document_with_both_panels() {
    let mut enq = latency_histogram();
    let mut e2e = latency_histogram();
    for i in 1..=10_000u64 {
        enq.record(500 + i % 700).unwrap();
        e2e.record(2_000 + (i * 37) % 9_000).unwrap();
    }
    e2e.record(250_000).unwrap();
    let enqueue: Vec<f64> = (0..40).map(|i| 1000.0 + f64::from(i) * 10.0).collect();
    let completion: Vec<f64> = (0..44).map(|i| 900.0 + f64::from(i) * 12.0).collect();
    let doc = svg(&PlotInput {
        title: "a <title> & \"quotes\"",
        bucket_s: 0.25,
        enqueue_per_s: &enqueue,
        completion_per_s: &completion,
        enqueue_latency: &enq,
        end_to_end_latency: &e2e,
    });
    assert!(doc.starts_with("<?xml"));
    assert!(doc.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    check_well_formed(&doc);
    assert!(doc.contains("a &lt;title&gt; &amp; &quot;quotes&quot;"));
    assert!(
        !doc.contains("NaN") && !doc.contains("inf"),
        "non-finite coordinates"
    );
    // Two throughput lines and two latency curves.
    assert_eq!(doc.matches("<polyline").count(), 4);
    assert!(doc.contains("Throughput") && doc.contains("Latency by percentile"));
}

#[test]
fn empty_data_still_makes_a_document() {
    let empty = latency_histogram();
    let doc = svg(&PlotInput {
        title: "nothing happened",
        bucket_s: 0.1,
        enqueue_per_s: &[],
        completion_per_s: &[],
        enqueue_latency: &empty,
        end_to_end_latency: &empty,
    });
    check_well_formed(&doc);
    assert!(!doc.contains("NaN") && !doc.contains("inf"));
}
