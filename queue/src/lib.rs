//! The contract shared by the gateway and the workers: how a call is named, where it is stored,
//! how it travels and what policy applies to it. Gateway and worker link this one crate so that
//! they cannot disagree on any of it. Process plumbing (flags, logging, signals, the HTTP client,
//! the metrics recorder) lives in `flotilla-runtime`, not here.

pub mod backoff;
pub mod batch;
pub mod dead_letter;
pub mod duration;
pub mod envelope;
pub mod fairness;
pub mod headers;
pub mod limits;
pub mod names;
pub mod policy;
pub mod priority;
pub mod report;
pub mod shard;
pub mod status;
pub mod subjects;
pub mod time;
pub mod topology;

pub use backoff::{Backoff, Jitter};
pub use duration::{DurationError, parse_duration};
pub use envelope::{Envelope, EnvelopeError};
pub use fairness::FairnessKey;
pub use names::{FunctionName, NameError};
pub use policy::{FunctionPolicy, InvalidPolicy, Policies, PolicyError, RetryPolicy, UrlError};
pub use priority::Priority;
pub use shard::ShardMap;
pub use topology::{StreamDrift, Topology, TopologyError};
