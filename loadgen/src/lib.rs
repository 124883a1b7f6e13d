//! `flotilla-loadgen` as a library: the load models, the local fleet, the ceiling, the audit and
//! the report, so that tests (and other tools) drive a run without going through the binary.

pub mod audit;
pub mod capacity;
pub mod ceiling;
pub mod config;
pub mod cpu;
pub mod dist;
pub mod driver;
pub mod flow;
pub mod function;
pub mod local;
pub mod mix;
pub mod net;
pub mod numbers;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sink;
pub mod stats;
pub mod status_audit;
pub mod sweep;
