//! The CPU a call costs, read from Linux's `/proc`: this process (with `--local` it holds the
//! fleet, the load, the built-in function and the callback sink), the run's own nats-server, and
//! the whole machine. On a shared machine the rate moves with whatever else runs; the CPU time a
//! call costs moves much less, so two runs compare better on it (`docs/benchmarks.md`).

use serde::Serialize;

/// Linux reports process and machine times in `USER_HZ` ticks, 100 a second on every
/// architecture Linux supports (`man 5 proc`).
const TICKS_PER_S: f64 = 100.0;

/// CPU time used so far, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMark {
    process: u64,
    nats_server: Option<u64>,
    /// Every core busy: user, nice, system, irq and softirq (not idle, iowait or steal).
    machine: u64,
}

impl CpuMark {
    /// Now, with the nats-server of process `nats_pid` when given; `None` without `/proc`.
    pub fn now(nats_pid: Option<u32>) -> Option<Self> {
        let process = process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let nats_server = nats_pid.and_then(|pid| {
            process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
        });
        let machine = machine_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some(Self {
            process,
            nats_server,
            machine,
        })
    }
}

/// CPU microseconds per call between two marks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPerCall {
    /// This process: with `--local`, the gateway and the workers, the load's own requests, the
    /// built-in function and the callback sink.
    pub process_us: f64,
    /// The run's own nats-server (`--local` and a ceiling's; absent against a given NATS).
    pub nats_server_us: Option<f64>,
    /// Every core of the machine, whatever runs there.
    pub machine_us: f64,
}

impl CpuPerCall {
    /// From `from` to `to` over `calls`; `None` without calls or marks.
    pub fn between(from: Option<CpuMark>, to: Option<CpuMark>, calls: u64) -> Option<Self> {
        let (from, to) = (from?, to?);
        if calls == 0 {
            return None;
        }
        let per_call = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6 / calls as f64;
        Some(Self {
            process_us: per_call(to.process.saturating_sub(from.process)),
            nats_server_us: to
                .nats_server
                .zip(from.nats_server)
                .map(|(t, f)| per_call(t.saturating_sub(f))),
            machine_us: per_call(to.machine.saturating_sub(from.machine)),
        })
    }

    /// `52 µs here, 17 µs in nats-server, 71 µs on the machine`.
    pub fn render(&self) -> String {
        let nats = self
            .nats_server_us
            .map(|n| format!(", {n:.0} µs in nats-server"))
            .unwrap_or_default();
        format!(
            "{:.0} µs in this process{nats}, {:.0} µs on the whole machine",
            self.process_us, self.machine_us
        )
    }
}

/// utime + stime of a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The busy ticks of every core, from `/proc/stat`'s first line.
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let t: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let at = |i: usize| t.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(process_ticks(line), Some(325));
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn the_machine_counts_busy_time_only() {
        let stat = "cpu  100 5 50 9000 40 3 7 11 0 0\ncpu0 50 2 25 4500 20 1 3 5 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(165));
        assert_eq!(machine_busy_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn ticks_become_microseconds_per_call() {
        let from = CpuMark {
            process: 1_000,
            nats_server: Some(500),
            machine: 3_000,
        };
        let to = CpuMark {
            process: 1_200,
            nats_server: Some(600),
            machine: 3_400,
        };
        // 200 ticks = 2 s over 40,000 calls = 50 µs a call.
        let got = CpuPerCall::between(Some(from), Some(to), 40_000).unwrap();
        assert_eq!(got.process_us, 50.0);
        assert_eq!(got.nats_server_us, Some(25.0));
        assert_eq!(got.machine_us, 100.0);
        assert_eq!(
            got.render(),
            "50 µs in this process, 25 µs in nats-server, 100 µs on the whole machine"
        );
        assert_eq!(CpuPerCall::between(Some(from), Some(to), 0), None);
        assert_eq!(CpuPerCall::between(None, Some(to), 10), None);
    }

    #[test]
    fn the_marks_follow_the_cpu_this_process_uses() {
        let mark = CpuMark::now(Some(std::process::id())).expect("/proc is readable");
        assert!(mark.nats_server.is_some(), "a given process is read too");
        assert_eq!(CpuMark::now(None).unwrap().nats_server, None);
        // Busy until both the process's ticks and the machine's move (bounded: a tick is 10 ms
        // of CPU). The kernel counts them apart, so one may move a tick before the other.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let now = CpuMark::now(None).unwrap();
            if now.process > mark.process && now.machine > mark.machine {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time not counted: process {} -> {}, machine {} -> {}",
                mark.process,
                now.process,
                mark.machine,
                now.machine
            );
        }
    }
}
