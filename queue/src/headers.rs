//! Every header name the fleet defines or reads, in one place, so that the gateway, the worker,
//! the loadgen and the dead-letter tools cannot spell one differently.
//!
//! Two kinds, because two header maps are in play:
//! - HTTP headers that clients, functions and callback receivers see, as `http::HeaderName`
//!   constants (`http` keeps names in lower case; [`spelled`] has them as the docs write them).
//!   Standard headers (`Retry-After`, `Content-Type`, `Authorization`, ...) are `http::header`'s
//!   own constants and are not repeated here.
//! - NATS headers the fleet writes on stored messages, as `&str`, which is what async-nats's
//!   header map takes. Every one starts with `Flotilla-` (or is JetStream's own `Nats-*`), so
//!   `envelope::is_dropped_header` keeps clients from forging them and a replayed call never
//!   forwards them to a function.

use http::HeaderName;

// ---------------------------------------------------------------------------------------------
// HTTP

/// A call's id: answered by the gateway on 202 (the client's own is kept and echoed), sent to the
/// function and the callback receiver.
pub const X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
/// Makes a retried POST enqueue once, like a client's own `X-Call-Id`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// A call's priority within its function: `high`, `normal` (the default) or `low`.
pub const X_PRIORITY: HeaderName = HeaderName::from_static("x-priority");
/// A call's fairness key within its function: calls of one function and priority start
/// round-robin across the keys with calls waiting (1 to 64 printable ASCII bytes).
pub const X_FAIRNESS_KEY: HeaderName = HeaderName::from_static("x-fairness-key");
/// Where the worker POSTs the call's outcome.
pub const X_CALLBACK_URL: HeaderName = HeaderName::from_static("x-callback-url");
/// Unix nanoseconds at which the gateway accepted the call (sent to function and callback).
pub const X_START_TIME: HeaderName = HeaderName::from_static("x-start-time");
/// An asynchronous call starts no earlier than this long after it is accepted (Go duration
/// syntax, or bare seconds).
pub const X_DELAY: HeaderName = HeaderName::from_static("x-delay");
/// An asynchronous call starts no earlier than this time (RFC 3339 or an HTTP date).
pub const X_NOT_BEFORE: HeaderName = HeaderName::from_static("x-not-before");
/// The id of a batch (`POST /async-batch/<name>` answers it; the batch callback carries it).
pub const X_BATCH_ID: HeaderName = HeaderName::from_static("x-batch-id");
/// Seconds the function took (callback; sync responses).
pub const X_DURATION_SECONDS: HeaderName = HeaderName::from_static("x-duration-seconds");
/// The function a callback reports on.
pub const X_FUNCTION_NAME: HeaderName = HeaderName::from_static("x-function-name");
/// The function's HTTP status, or 502/504 when it was unreachable or timed out (callback).
pub const X_FUNCTION_STATUS: HeaderName = HeaderName::from_static("x-function-status");
/// Attempts made before the one a callback reports on.
pub const X_RETRY: HeaderName = HeaderName::from_static("x-retry");
/// Attempts the function's retry policy allows after the first.
pub const X_RETRY_MAX: HeaderName = HeaderName::from_static("x-retry-max");

/// The client's keys above as error messages spell them (the others appear in no message).
pub mod spelled {
    pub const X_CALL_ID: &str = "X-Call-Id";
    pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
    pub const X_DELAY: &str = "X-Delay";
    pub const X_NOT_BEFORE: &str = "X-Not-Before";
    pub const X_PRIORITY: &str = "X-Priority";
    pub const X_FAIRNESS_KEY: &str = "X-Fairness-Key";
}

// ---------------------------------------------------------------------------------------------
// NATS

/// Headers of JetStream's own; a request header with this prefix would steer JetStream.
pub const NATS_PREFIX: &str = "Nats-";
/// Headers of the fleet's own on stored messages; a request header with this prefix would forge
/// them.
pub const FLOTILLA_PREFIX: &str = "Flotilla-";

/// JetStream's de-duplication id, from the client library.
pub use async_nats::header::NATS_MESSAGE_ID;
/// Added by JetStream to a headers-only delivery: the size of the payload it left out.
pub const NATS_MSG_SIZE: &str = "Nats-Msg-Size";
/// On a pull request's expiry notice: how many of the messages it asked for it will not deliver.
pub const NATS_PENDING_MESSAGES: &str = "Nats-Pending-Messages";
/// The subject whose last sequence `Nats-Expected-Last-Subject-Sequence` is compared with,
/// instead of the published one (nats-server 2.11): how a status page's two sides guard each
/// other.
pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// The packed control fields of a call (format in `envelope`).
pub const FLOTILLA_CALL: &str = "Flotilla-Call";
/// Unix nanoseconds at which a waiting retry is due. Only on messages under the retry subjects.
pub const FLOTILLA_RETRY_AT: &str = "Flotilla-Retry-At";

/// On a call whose body is larger than one NATS message holds: the name of the object in the
/// `FLOTILLA_BODIES` object store that holds it (the message's own payload is then empty).
pub const FLOTILLA_BODY_OBJECT: &str = "Flotilla-Body-Object";
/// On a call enqueued in a batch: the batch's id.
pub const FLOTILLA_BATCH: &str = "Flotilla-Batch";
/// On a call whose priority is not `normal`: `high` or `low` (see `priority`).
pub const FLOTILLA_PRIORITY: &str = "Flotilla-Priority";
/// On a call with a fairness key: the key (see `fairness`).
pub const FLOTILLA_FAIRNESS_KEY: &str = "Flotilla-Fairness-Key";
/// On a keyed call claimed under `key_concurrency`: the key slot it holds, `<sequence> <subject>`
/// in `FLOTILLA_KEY_SLOTS`, freed when the call ends.
pub const FLOTILLA_KEY_SLOT: &str = "Flotilla-Key-Slot";
/// On a queued call: the stream sequence of its status record when it was queued, so the worker
/// can write the next state as a compare-and-set without reading the record first.
pub const FLOTILLA_STATUS_REV: &str = "Flotilla-Status-Rev";
/// The function's HTTP status on a kept result in `FLOTILLA_RESULTS` (see `status`).
pub const FLOTILLA_FUNCTION_STATUS: &str = "Flotilla-Function-Status";

// What a dead letter in `FLOTILLA_DEAD` carries besides the original message's headers (see
// `dead_letter`).

/// Why the message was dead-lettered, as text fit for an operator.
pub const DEAD_REASON: &str = "Flotilla-Dead-Reason";
/// What kind of failure (`dead_letter::KIND_*`).
pub const DEAD_KIND: &str = "Flotilla-Dead-Kind";
/// The stream the message came from.
pub const DEAD_STREAM: &str = "Flotilla-Dead-Stream";
/// The sequence in that stream.
pub const DEAD_SEQUENCE: &str = "Flotilla-Dead-Sequence";
/// The subject the message was published to (it names the function even when the envelope does
/// not parse).
pub const DEAD_SUBJECT: &str = "Flotilla-Dead-Subject";
/// Unix nanoseconds at which the message was dead-lettered.
pub const DEAD_TIME: &str = "Flotilla-Dead-Time";
/// Attempts made (deliveries plus the envelope's earlier attempts).
pub const DEAD_ATTEMPTS: &str = "Flotilla-Dead-Attempts";
/// The last HTTP status, when the function answered or was reported unreachable (502/504).
pub const DEAD_LAST_STATUS: &str = "Flotilla-Dead-Last-Status";

/// Header names of the envelope's version 1, read (never written) so that messages stored before
/// an upgrade still decode.
pub mod v1 {
    pub const H_VERSION: &str = "Flotilla-Version";
    pub const H_CALL_ID: &str = "Flotilla-Call-Id";
    pub const H_FUNCTION: &str = "Flotilla-Function";
    pub const H_METHOD: &str = "Flotilla-Method";
    pub const H_PATH: &str = "Flotilla-Path";
    pub const H_QUERY: &str = "Flotilla-Query";
    pub const H_CALLBACK_URL: &str = "Flotilla-Callback-Url";
    pub const H_START_TIME: &str = "Flotilla-Start-Time";
    pub const H_ATTEMPT: &str = "Flotilla-Attempt";
    /// The value of `Flotilla-Version` on such messages.
    pub const VERSION: &str = "1";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_name_the_same_headers() {
        for (name, text) in [
            (X_CALL_ID, spelled::X_CALL_ID),
            (IDEMPOTENCY_KEY, spelled::IDEMPOTENCY_KEY),
            (X_PRIORITY, spelled::X_PRIORITY),
            (X_FAIRNESS_KEY, spelled::X_FAIRNESS_KEY),
        ] {
            assert_eq!(HeaderName::from_bytes(text.as_bytes()).unwrap(), name);
        }
    }

    #[test]
    fn stored_names_carry_a_reserved_prefix() {
        let stored = [
            FLOTILLA_CALL,
            FLOTILLA_RETRY_AT,
            FLOTILLA_PRIORITY,
            FLOTILLA_FAIRNESS_KEY,
            FLOTILLA_KEY_SLOT,
            DEAD_REASON,
            DEAD_KIND,
            DEAD_STREAM,
            DEAD_SEQUENCE,
            DEAD_SUBJECT,
            DEAD_TIME,
            DEAD_ATTEMPTS,
            DEAD_LAST_STATUS,
            v1::H_VERSION,
            v1::H_CALL_ID,
            v1::H_FUNCTION,
            v1::H_METHOD,
            v1::H_PATH,
            v1::H_QUERY,
            v1::H_CALLBACK_URL,
            v1::H_START_TIME,
            v1::H_ATTEMPT,
        ];
        for name in stored {
            assert!(name.starts_with(FLOTILLA_PREFIX), "{name}");
        }
        assert!(NATS_MSG_SIZE.starts_with(NATS_PREFIX));
        let id: &str = NATS_MESSAGE_ID.as_ref();
        assert!(id.starts_with(NATS_PREFIX));
    }
}
