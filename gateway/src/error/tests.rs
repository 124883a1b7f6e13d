use std::collections::HashSet;

use std::error::Error as _;

use async_nats::jetstream::context::PublishErrorKind;
use flotilla_queue::FunctionName;

use super::*;

/// One error of every kind, with the status, side and retryability it must have.
fn every_kind() -> Vec<(CallError, u16, Side, bool)> {
    let name_error = FunctionName::parse("no/slash").unwrap_err();
    let function = || "echo".to_owned();
    vec![
        (CallError::NotFound, 404, Side::Downstream, false),
        (
            CallError::CrossSite("Origin is another site"),
            403,
            Side::Downstream,
            false,
        ),
        (CallError::UnknownLetter(7), 404, Side::Downstream, false),
        (
            CallError::UnknownFunction(function()),
            404,
            Side::Downstream,
            false,
        ),
        (
            CallError::MethodNotAllowed { allow: "GET" },
            405,
            Side::Downstream,
            false,
        ),
        (CallError::BadName(name_error), 400, Side::Downstream, false),
        (
            CallError::BadCallbackUrl("is not a URL"),
            400,
            Side::Downstream,
            false,
        ),
        (
            CallError::BadHeader {
                header: "X-Call-Id",
                reason: "is too long",
            },
            400,
            Side::Downstream,
            false,
        ),
        (
            CallError::BodyRead("reset".into()),
            400,
            Side::Downstream,
            false,
        ),
        (
            CallError::BodyTooLarge { limit: 10 },
            413,
            Side::Downstream,
            false,
        ),
        (CallError::MessageTooLarge, 413, Side::Downstream, false),
        (
            CallError::CallbackRefused(flotilla_runtime::Refused::BuiltIn {
                target: "169.254.169.254".into(),
                why: "link-local",
            }),
            400,
            Side::Downstream,
            false,
        ),
        (
            CallError::HeadersTooLarge {
                size: 70_000,
                limit: 65_535,
            },
            431,
            Side::Downstream,
            false,
        ),
        (CallError::Unauthorized, 401, Side::Downstream, false),
        (
            CallError::BadRequest("limit".into()),
            400,
            Side::Downstream,
            false,
        ),
        (
            CallError::NotReady("topology not agreed"),
            503,
            Side::Upstream,
            true,
        ),
        (CallError::NatsDown, 503, Side::Upstream, true),
        (
            CallError::UnknownCall("c1".into()),
            404,
            Side::Downstream,
            false,
        ),
        (
            CallError::ResultNotKept {
                call_id: "c1".into(),
                why: "not kept".into(),
            },
            404,
            Side::Downstream,
            false,
        ),
        (CallError::StatusOff, 404, Side::Downstream, false),
        (
            CallError::UnknownBatch("b1".into()),
            404,
            Side::Downstream,
            false,
        ),
        (
            CallError::UnsupportedMediaType("application/x-ndjson"),
            415,
            Side::Downstream,
            false,
        ),
        (
            CallError::Status(StoreError::WriterGone.into()),
            503,
            Side::Upstream,
            true,
        ),
        (
            CallError::Publish(EnqueueError::NoAck(PublishError::new(
                PublishErrorKind::TimedOut,
            ))),
            503,
            Side::Upstream,
            true,
        ),
        (
            CallError::DeadLetters {
                doing: "reading dead letters",
                source: "timed out".into(),
            },
            503,
            Side::Upstream,
            true,
        ),
        (
            CallError::Queues(crate::queues::QueuesError::Answer {
                what: "the calls of f".into(),
                answer: "an answer without Nats-Num-Pending".into(),
            }),
            503,
            Side::Upstream,
            true,
        ),
        (
            CallError::Unreachable {
                function: function(),
            },
            502,
            Side::Upstream,
            true,
        ),
        (
            CallError::UpstreamBroken {
                function: function(),
            },
            502,
            Side::Upstream,
            true,
        ),
        (
            CallError::FunctionTls {
                function: function(),
                source: "invalid peer certificate: certificate expired".into(),
            },
            502,
            Side::Upstream,
            false,
        ),
        (
            CallError::Timeout {
                function: function(),
                after: Duration::from_secs(1),
            },
            504,
            Side::Upstream,
            true,
        ),
        (
            CallError::BadFunctionUrl {
                url: "http://a b".into(),
                source: "http://a b".parse::<http::Uri>().unwrap_err(),
            },
            500,
            Side::Internal,
            false,
        ),
        (
            CallError::Internal(serde_json::from_str::<u8>("x").unwrap_err().into()),
            500,
            Side::Internal,
            false,
        ),
    ]
}

#[test]
fn every_error_has_its_status_side_and_retryability() {
    for (error, status, side, retryable) in every_kind() {
        assert_eq!(error.status().as_u16(), status, "{error:?}");
        assert_eq!(error.side(), side, "{error:?}");
        assert_eq!(error.is_retryable(), retryable, "{error:?}");
    }
}

#[test]
fn classifications_agree_with_each_other() {
    let mut reasons = HashSet::new();
    for (error, ..) in every_kind() {
        let status = error.status();
        match error.side() {
            Side::Downstream => assert!(status.is_client_error(), "{error:?}"),
            Side::Upstream | Side::Internal => assert!(status.is_server_error(), "{error:?}"),
        }
        assert!(reasons.insert(error.reason()), "reason reused: {error:?}");
        let resp = error.into_response(&HeaderValue::from_static("7"));
        // Retry-After exactly where the gateway (not the function) is briefly unavailable.
        assert_eq!(
            resp.headers().contains_key(header::RETRY_AFTER),
            resp.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            resp.status()
        );
    }
}

#[test]
fn texts_stay_and_causes_are_kept() {
    let publish = |kind| PublishError::new(kind);
    let cases: Vec<(CallError, &str, bool)> = vec![
        (
            CallError::BodyRead("connection reset".into()),
            "request body could not be read: connection reset",
            true,
        ),
        (
            CallError::Publish(EnqueueError::NoAck(publish(PublishErrorKind::TimedOut))),
            "enqueue failed: no PubAck from JetStream in time",
            true,
        ),
        (
            CallError::Publish(EnqueueError::NoStream {
                shard: 2,
                stream: "FLOTILLA_CALLS_2".into(),
                source: publish(PublishErrorKind::StreamNotFound),
            }),
            "enqueue failed: no stream for shard 2 (FLOTILLA_CALLS_2)",
            true,
        ),
        (
            CallError::Publish(EnqueueError::AckWindowFull(publish(
                PublishErrorKind::MaxAckPending,
            ))),
            "enqueue failed: too many calls awaiting JetStream's PubAck",
            true,
        ),
        (
            CallError::Publish(EnqueueError::Other(publish(PublishErrorKind::BrokenPipe))),
            "enqueue failed: broken pipe",
            true,
        ),
        (
            CallError::DeadLetters {
                doing: "reading dead letters",
                source: "timed out".into(),
            },
            "dead letters unavailable: reading dead letters: timed out",
            true,
        ),
        (
            CallError::BadFunctionUrl {
                url: "http://a b".into(),
                source: "http://a b".parse::<http::Uri>().unwrap_err(),
            },
            "function URL is invalid: http://a b: invalid uri character",
            true,
        ),
        (
            CallError::BadRequest(Invalid::Json {
                what: "line is not a call",
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            }),
            "line is not a call: expected value at line 1 column 1",
            true,
        ),
        (
            CallError::BadRequest("empty line".into()),
            "empty line",
            false,
        ),
        (
            CallError::Status(StoreError::WriterGone.into()),
            "call status unavailable: the status writer has stopped",
            true,
        ),
        (
            CallError::FunctionTls {
                function: "echo".into(),
                source: "invalid peer certificate: UnknownIssuer".into(),
            },
            "function echo is unreachable over TLS: invalid peer certificate: UnknownIssuer",
            true,
        ),
    ];
    for (error, text, caused) in cases {
        assert_eq!(error.to_string(), text);
        assert_eq!(error.source().is_some(), caused, "{error:?}");
    }
}

#[test]
fn a_nats_client_that_cannot_be_made_is_a_configuration_error() {
    let e = GatewayError::Connect {
        url: "nats://exa mple:4222".into(),
        source: async_nats::ConnectError::new(async_nats::ConnectErrorKind::ServerParse),
    };
    assert!(e.is_config());
    assert!(
        e.to_string()
            .starts_with("--nats-url nats://exa mple:4222: "),
        "{e}"
    );
    assert!(e.source().is_some());
    let io = GatewayError::Io(std::io::Error::other("listener gone"));
    assert!(!io.is_config());
}
