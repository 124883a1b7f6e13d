//! Dead letters: the headers a message carries in `FLOTILLA_DEAD`, so that the worker that
//! writes dead letters and the gateway that lists and replays them read the same names.
//!
//! A dead letter keeps the original message's headers and payload (minus `Nats-*` headers, which
//! would steer JetStream) and adds the `Flotilla-Dead-*` headers (`headers::DEAD_*`, re-exported
//! below under the names their writer and readers use). Every name starts with `Flotilla-`, so
//! `Envelope::from_nats` never forwards them to a function when a dead letter is replayed.

/// The dead-letter header names, declared with every other in `headers`.
pub use crate::headers::{
    DEAD_ATTEMPTS as H_ATTEMPTS, DEAD_KIND as H_KIND, DEAD_LAST_STATUS as H_LAST_STATUS,
    DEAD_REASON as H_REASON, DEAD_SEQUENCE as H_SEQUENCE, DEAD_STREAM as H_STREAM,
    DEAD_SUBJECT as H_SUBJECT, DEAD_TIME as H_TIME,
};

/// The message could not be decoded into an envelope; running it again cannot help.
pub const KIND_POISON: &str = "poison";
/// The call failed on every attempt its retry policy allowed.
pub const KIND_EXHAUSTED: &str = "exhausted";
/// The call was not started within its function's `max_age` of being accepted; it never ran.
pub const KIND_EXPIRED: &str = "expired";
/// The call was delivered more often than the worker's `--max-deliveries` without ever being
/// settled: each run crashed the worker, or hung it until it was killed, or lost its ack. Attempts
/// are counted from the envelope, so without this cap such a call would come back forever.
pub const KIND_REDELIVERED: &str = "redelivered";

/// `Nats-Msg-Id` of a dead letter: the origin stream and sequence, so a worker that crashes after
/// writing a dead letter but before settling the original writes it only once when the message
/// comes back (within the dead stream's duplicate window).
pub fn dedup_id(stream: &str, sequence: u64) -> String {
    format!("dead-{stream}-{sequence}")
}
