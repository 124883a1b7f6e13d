use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_queue::{Envelope, FunctionName};
use http::{HeaderMap, StatusCode};

use super::attempt::build_request;
use super::*;
use crate::budget::tests::call;
use crate::budget::{Budget, Running};

fn envelope() -> Envelope {
    Envelope {
        call_id: "call-1".into(),
        function: FunctionName::parse("echo").unwrap(),
        method: "POST".into(),
        path: "/x".into(),
        query: "a=1".into(),
        callback_url: None,
        start_time: 42,
        attempt: 0,
        headers: vec![
            ("X-Call-Id".into(), "forged".into()),
            ("x-start-time".into(), "1".into()),
            ("X-Custom".into(), "kept".into()),
        ],
        body: Bytes::from_static(b"hi"),
        batch_id: None,
        body_object: None,
        priority: Default::default(),
        fairness_key: None,
    }
}

fn first() -> Attempt {
    Attempt {
        earlier: 0,
        delivered: 1,
    }
}

fn answered(status: u16) -> Outcome {
    Outcome {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        error: None,
        duration: Duration::from_millis(3),
        attempt: first(),
    }
}

#[test]
fn a_stored_retry_lets_go_of_the_slot_while_a_callback_still_holds_it() {
    let running = Arc::new(Running::new(Arc::new(Budget::new(8))));
    let retry = Settling::of(Next::Retry(Duration::from_secs(1)), call(&running));
    assert!(matches!(retry, Settling::Retry(d) if d == Duration::from_secs(1)));
    assert_eq!(
        running.calls(),
        0,
        "a retry waits in JetStream, not in a slot"
    );
    let dead = Settling::of(Next::DeadLetter, call(&running));
    let settle = Settling::of(Next::Settle, call(&running));
    assert!(matches!(dead, Settling::DeadLetter(_)));
    assert!(matches!(settle, Settling::Settle(_)));
    assert_eq!(running.calls(), 2, "both keep the slot for their callback");
    drop(dead);
    drop(settle);
    assert_eq!(running.calls(), 0);
}

#[test]
fn the_state_recorded_follows_the_next_step_and_the_answer() {
    let failed = Outcome::failed(
        CallError::Timeout(Duration::from_secs(1)),
        Duration::ZERO,
        first(),
    );
    assert_eq!(
        end_state(&failed, &Next::Retry(Duration::ZERO)),
        CallState::Retrying
    );
    assert_eq!(end_state(&failed, &Next::DeadLetter), CallState::Dead);
    assert_eq!(end_state(&failed, &Next::Settle), CallState::Failed);
    assert_eq!(
        end_state(&answered(200), &Next::Settle),
        CallState::Succeeded
    );
    assert_eq!(end_state(&answered(404), &Next::Settle), CallState::Failed);
}

#[test]
fn the_request_carries_the_calls_own_id_and_start_time_not_the_clients() {
    let req = build_request("http://127.0.0.1:9/fn/x?a=1", &envelope()).unwrap();
    let head = String::from_utf8(req.head().to_vec()).unwrap();
    assert!(head.starts_with("POST /fn/x?a=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("x-custom: kept\r\n"), "{head}");
    assert!(head.contains("x-call-id: call-1\r\n"), "{head}");
    assert!(head.contains("x-start-time: 42\r\n"), "{head}");
    assert!(!head.contains("forged"), "{head}");
    assert!(!head.contains("x-start-time: 1\r\n"), "{head}");
}

#[test]
fn a_method_that_is_no_method_fails_the_attempt_for_good() {
    let mut env = envelope();
    env.method = "NO METHOD".into();
    let error = build_request("http://127.0.0.1:9/", &env).unwrap_err();
    assert!(matches!(error, CallError::InvalidRequest(_)), "{error:?}");
    assert!(!error.is_retryable());
    assert_eq!(error.to_string(), "invalid request: method \"NO METHOD\"");
}
