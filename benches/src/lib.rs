//! What the criterion benches under `benches/` share: the sample call they all measure, so every
//! bench reports on the same request.

use bytes::Bytes;
use flotilla_queue::{Envelope, FunctionName};

/// A typical asynchronous call: a namespaced function, a path and query, a callback URL, four
/// request headers and a body of `body` bytes.
pub fn sample_call(body: usize) -> Envelope {
    Envelope {
        call_id: "0b6e9c1e-3f7a-4f51-9a43-2f3d0c9c1a77".into(),
        function: FunctionName::parse("resize-image.media").expect("valid"),
        method: "POST".into(),
        path: "/v1/thumbnail".into(),
        query: "w=128&h=128".into(),
        callback_url: Some("http://callbacks.internal:8080/done".into()),
        start_time: 1_795_000_000_123_456_789,
        attempt: 0,
        headers: vec![
            ("Content-Type".into(), "application/octet-stream".into()),
            ("User-Agent".into(), "curl/8.5.0".into()),
            ("Accept".into(), "*/*".into()),
            ("X-Request-Id".into(), "req-5521".into()),
        ],
        body: Bytes::from(vec![b'x'; body]),
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    }
}
