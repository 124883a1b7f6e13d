//! Dead letters: the headers a message carries in `FLOTILLA_DEAD`, so that the worker that
//! writes dead letters and the gateway that lists and replays them read the same names.
//!
//! A dead letter keeps the original message's headers and payload (minus `Nats-*` headers, which
//! would steer JetStream) and adds the headers below. Every name starts with `Flotilla-`, so
//! `Envelope::from_nats` never forwards them to a function when a dead letter is replayed.

/// Why the message was dead-lettered, as text fit for an operator.
pub const H_REASON: &str = "Flotilla-Dead-Reason";
/// What kind of failure: [`KIND_POISON`], [`KIND_EXHAUSTED`] or [`KIND_REDELIVERED`].
pub const H_KIND: &str = "Flotilla-Dead-Kind";
/// The stream and stream sequence the message came from.
pub const H_STREAM: &str = "Flotilla-Dead-Stream";
pub const H_SEQUENCE: &str = "Flotilla-Dead-Sequence";
/// The subject the message was published to (it names the function even when the envelope does
/// not parse).
pub const H_SUBJECT: &str = "Flotilla-Dead-Subject";
/// Unix nanoseconds at which the message was dead-lettered.
pub const H_TIME: &str = "Flotilla-Dead-Time";
/// Attempts made (deliveries plus the envelope's earlier attempts).
pub const H_ATTEMPTS: &str = "Flotilla-Dead-Attempts";
/// The last HTTP status, when the function answered or was reported unreachable (502/504).
pub const H_LAST_STATUS: &str = "Flotilla-Dead-Last-Status";

/// The message could not be decoded into an envelope; running it again cannot help.
pub const KIND_POISON: &str = "poison";
/// The call failed on every attempt its retry policy allowed.
pub const KIND_EXHAUSTED: &str = "exhausted";
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
