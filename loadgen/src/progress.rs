//! The live progress line on stderr: on a terminal one line rewritten four times a second (rates
//! over the last second, requests in flight, calls queued in the fleet, errors); elsewhere (CI,
//! a pipe) a plain line every two seconds.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::numbers::thousands;
use crate::sink::SinkState;
use crate::stats::Recorder;

/// A running progress display; `finish` clears the line.
#[derive(Debug)]
pub struct Progress {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    tty: bool,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    accepted: u64,
    completed: u64,
}

/// Counters read by the line, and the phase shown first.
pub fn start(
    rec: Arc<Recorder>,
    sink: Arc<SinkState>,
    phase: &'static str,
    quiet: bool,
) -> Progress {
    let tty = std::io::stderr().is_terminal();
    let stop = CancellationToken::new();
    if quiet {
        return Progress {
            stop,
            task: None,
            tty,
        };
    }
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        let start = Instant::now();
        let mut history: std::collections::VecDeque<Sample> = std::collections::VecDeque::new();
        // The first line already has a rate: the counters as they were when the phase began.
        history.push_back(Sample {
            at: Instant::now(),
            accepted: rec.accepted.load(std::sync::atomic::Ordering::Relaxed),
            completed: sink.count(),
        });
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Sample {
                at: Instant::now(),
                accepted: rec.accepted.load(std::sync::atomic::Ordering::Relaxed),
                completed: sink.count(),
            };
            history.push_back(now);
            while history.len() > 2
                && now.at.duration_since(history[1].at) >= Duration::from_millis(1000)
            {
                history.pop_front();
            }
            let first = history[0];
            let dt = now.at.duration_since(first.at).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| {
                if history.len() > 1 {
                    a.saturating_sub(b) as f64 / dt
                } else {
                    0.0
                }
            };
            let sent = rec.sent.load(std::sync::atomic::Ordering::Relaxed);
            let answered = rec.answered.load(std::sync::atomic::Ordering::Relaxed);
            let line = format!(
                "{phase} {:>5.1}s  202 {:>8}/s  done {:>8}/s  sending {:>6}  queued {:>8}  errors {}",
                start.elapsed().as_secs_f64(),
                thousands(rate(now.accepted, first.accepted)),
                thousands(rate(now.completed, first.completed)),
                sent.saturating_sub(answered),
                now.accepted.saturating_sub(now.completed),
                rec.errors.load(std::sync::atomic::Ordering::Relaxed),
            );
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    });
    Progress {
        stop,
        task: Some(task),
        tty,
    }
}

impl Progress {
    /// Stops the display and clears its line.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
            if self.tty {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            }
        }
    }
}

/// A status message between phases (on stderr, so stdout stays clean for `--json`).
pub fn note(quiet: bool, message: &str) {
    if !quiet {
        eprintln!("{message}");
    }
}
