//! The controller against a simulated function on a simulated clock: replicas send as their
//! limits allow, the function takes calls up to its capacity (which may change) and refuses the
//! rest at once, and a refused call waits for its turn again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;

/// How fast a refusal comes back.
const REFUSAL_RTT: Duration = Duration::from_millis(1);

struct Bench {
    calls: u32,
    latency: Duration,
    /// `(from, capacity)`, sorted, the first from zero.
    capacity: Vec<(Duration, u32)>,
    replicas: usize,
    ceiling: u32,
}

#[derive(Debug)]
struct Run {
    took: Duration,
    refusals: u32,
    /// The largest number of calls at the function at once, across replicas.
    peak: u32,
    /// Each replica's limit at the end.
    limits: Vec<u32>,
}

impl Bench {
    fn capacity_at(&self, t: Duration) -> u32 {
        self.capacity
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .map_or(0, |(_, c)| *c)
    }

    /// The shortest possible run: the function kept full the whole time.
    fn ideal(&self) -> Duration {
        let mut work = self.latency.as_secs_f64() * f64::from(self.calls);
        let mut t = 0.0;
        for (i, (from, cap)) in self.capacity.iter().enumerate() {
            let until = self.capacity.get(i + 1).map(|(f, _)| f.as_secs_f64());
            let cap = f64::from(*cap);
            let span = until.map_or(f64::INFINITY, |u| u - from.as_secs_f64());
            if cap * span >= work {
                return Duration::from_secs_f64(t + work / cap);
            }
            work -= cap * span;
            t += span;
        }
        unreachable!("the last capacity lasts for ever")
    }

    fn run(&self) -> Run {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Event {
            Wake,
            Answer {
                replica: usize,
                refused: bool,
                in_flight: u32,
                answered: u64,
            },
        }
        let base = Instant::now();
        let mut limits: Vec<Limit> = (0..self.replicas)
            .map(|_| Limit::new(1, self.ceiling, self.replicas as u32))
            .collect();
        let mut in_flight = vec![0_u32; self.replicas];
        let mut answered = vec![0_u64; self.replicas];
        let mut paused_until = vec![Duration::ZERO; self.replicas];
        let mut events: BinaryHeap<Reverse<(Duration, u64, Event)>> = BinaryHeap::new();
        let (mut seq, mut queued, mut done, mut refusals, mut active, mut peak) =
            (0_u64, self.calls, 0, 0, 0_u32, 0);
        let mut now = Duration::ZERO;
        while done < self.calls {
            for r in 0..self.replicas {
                while queued > 0 && now >= paused_until[r] && in_flight[r] < limits[r].current() {
                    queued -= 1;
                    in_flight[r] += 1;
                    let refused = active >= self.capacity_at(now);
                    let at = if refused {
                        REFUSAL_RTT
                    } else {
                        active += 1;
                        peak = peak.max(active);
                        self.latency
                    };
                    seq += 1;
                    let answer = Event::Answer {
                        replica: r,
                        refused,
                        in_flight: in_flight[r],
                        answered: answered[r],
                    };
                    events.push(Reverse((now + at, seq, answer)));
                }
            }
            let Some(Reverse((t, _, event))) = events.pop() else {
                panic!("stalled with {queued} queued at {now:?}");
            };
            assert!(t < Duration::from_secs(3600), "ran for an hour");
            now = t;
            let Event::Answer {
                replica,
                refused,
                in_flight: sent_with,
                answered: answered_before,
            } = event
            else {
                continue;
            };
            in_flight[replica] -= 1;
            if refused {
                refusals += 1;
                queued += 1;
                let crossed = u32::try_from(answered[replica] - answered_before).unwrap();
                let others = in_flight[replica] + crossed;
                if let Refusal::Pause(d) = limits[replica].refused(base + now, sent_with, others) {
                    paused_until[replica] = now + d;
                    seq += 1;
                    events.push(Reverse((now + d, seq, Event::Wake)));
                }
            } else {
                active -= 1;
                done += 1;
                answered[replica] += 1;
                limits[replica].succeeded(base + now, sent_with);
            }
        }
        Run {
            took: now,
            refusals,
            peak,
            limits: limits.iter().map(Limit::current).collect(),
        }
    }
}

fn bench(calls: u32, latency_ms: u64, capacity: &[(u64, u32)], replicas: usize) -> Bench {
    Bench {
        calls,
        latency: Duration::from_millis(latency_ms),
        capacity: capacity
            .iter()
            .map(|(s, c)| (Duration::from_secs(*s), *c))
            .collect(),
        replicas,
        ceiling: 100,
    }
}

fn ratio(run: &Run, b: &Bench) -> f64 {
    run.took.as_secs_f64() / b.ideal().as_secs_f64()
}

#[test]
fn converges_on_a_small_capacity_with_few_refusals() {
    for replicas in [1, 2, 4] {
        let b = bench(2_000, 50, &[(0, 4)], replicas);
        let run = b.run();
        let r = ratio(&run, &b);
        assert!(r < 1.1, "{replicas} replicas: {r:.3} of the ideal, {run:?}");
        assert!(
            run.refusals < 2_000 / 20,
            "{replicas} replicas: {} refusals",
            run.refusals
        );
        assert!(
            run.limits.iter().sum::<u32>() <= 4 + replicas as u32,
            "{run:?}"
        );
    }
}

#[test]
fn follows_a_capacity_that_grows_and_shrinks() {
    for replicas in [1, 2, 4] {
        let b = bench(4_000, 50, &[(0, 4), (10, 16), (20, 4)], replicas);
        let run = b.run();
        let r = ratio(&run, &b);
        assert!(r < 1.2, "{replicas} replicas: {r:.3} of the ideal, {run:?}");
        assert!(run.refusals < 4_000 / 20, "{replicas} replicas: {run:?}");
    }
}

#[test]
fn a_function_without_limits_is_sent_its_ceiling_at_once() {
    let b = bench(20_000, 20, &[(0, u32::MAX)], 1);
    let run = b.run();
    assert_eq!(run.refusals, 0);
    assert_eq!(run.peak, 100, "slow start reaches the ceiling");
    let r = run.took.as_secs_f64() / (20_000.0 * 0.020 / 100.0);
    assert!(r < 1.03, "{r:.3} of the ceiling's time");
    assert_eq!(run.limits, [100]);
}

#[test]
fn a_function_that_refuses_everything_is_asked_less_and_less_often() {
    // Down for 20 s, then room for 4.
    let b = bench(200, 50, &[(0, 0), (20, 4)], 2);
    let run = b.run();
    // Each replica's first calls are refused one by one (the limit comes down to the floor),
    // then it pauses 0.1, 0.2, ... up to 5 s: dozens of refusals, where calling again at once
    // would have made one a millisecond (40,000).
    assert!(run.refusals < 100, "{run:?}");
    let took = run.took.as_secs_f64();
    assert!(
        took < 20.0 + 5.0 + 4.0,
        "found again within a pause: {took:.1} s"
    );
}

#[test]
fn stays_within_its_bounds() {
    let t = Instant::now();
    assert_eq!(
        Limit::new(3, 5, 1).current(),
        5,
        "the initial limit is capped by the ceiling"
    );
    let mut l = Limit::new(3, 10, 1);
    for _ in 0..20 {
        let pause = l.pause;
        assert_eq!(l.refused(t, 1, 0), Refusal::Pause(pause));
    }
    assert_eq!(l.pause, PAUSE_MAX);
    assert_eq!(l.current(), 3, "never below min");
    let mut t2 = t;
    for _ in 0..1_000 {
        t2 += Duration::from_millis(10);
        l.succeeded(t2, 10);
    }
    assert_eq!(l.current(), 10, "never above max");
    l.set_max(4);
    assert_eq!(l.current(), 4);
    l.set_max(2);
    assert_eq!(
        (l.current(), l.min),
        (2, 2),
        "min follows a ceiling below it"
    );
}

#[test]
fn a_refusal_lowers_to_what_the_function_held_and_probes_wait_longer_when_refused() {
    let ms = Duration::from_millis;
    let t0 = Instant::now();
    let mut l = Limit::new(1, 100, 1);
    assert_eq!(
        Limit::new(1, 100, 4).current(),
        INITIAL / 4,
        "replicas share the start"
    );
    assert_eq!(l.current(), INITIAL);
    // INITIAL sent at once, 4 taken: the calls sent 5th to last are refused.
    for sent in (5..=INITIAL).rev() {
        assert_eq!(l.refused(t0, sent, sent - 1), Refusal::Lowered);
    }
    assert_eq!(l.current(), 4);
    // A call sent beyond the limit before it came down is refused: no news.
    assert_eq!(l.refused(t0, 6, 4), Refusal::Lowered);
    assert_eq!(l.current(), 4);
    // Successes within the quiet period do not grow it.
    l.succeeded(t0 + ms(100), 4);
    assert_eq!(l.current(), 4);
    // After it, a probe of one call, and nothing more until a call at that level answers.
    let after = t0 + HOLD_MIN;
    l.succeeded(after, 4);
    assert_eq!(l.current(), 5);
    l.succeeded(after + ms(500), 4);
    assert_eq!(l.current(), 5, "no verdict yet");
    // The probe is refused: back to 4, and a longer wait before the next.
    assert_eq!(l.refused(after + ms(520), 5, 4), Refusal::Lowered);
    assert_eq!((l.current(), l.hold), (4, HOLD_MIN * 2));
    l.succeeded(after + ms(600), 4);
    assert_eq!(l.current(), 4, "within the longer wait");
    // Probes that find room take bigger steps at once.
    let t = after + ms(520) + HOLD_MIN * 2;
    l.succeeded(t, 4);
    for want in [7, 11, 19] {
        l.succeeded(t, l.current());
        assert_eq!(l.current(), want);
    }
    assert_eq!(l.hold, HOLD_MIN);
}

#[test]
fn calls_waiting_for_slots_double_the_limit_only_in_slow_start() {
    let t = Instant::now();
    let mut l = Limit::new(1, 20, 1);
    assert!(l.grow_on_demand());
    assert_eq!(l.current(), 2 * INITIAL);
    assert!(l.grow_on_demand());
    assert_eq!(l.current(), 20, "not above the ceiling");
    assert!(!l.grow_on_demand(), "at the ceiling");
    let mut l = Limit::new(1, 100, 1);
    l.refused(t, INITIAL, 3);
    assert!(
        !l.grow_on_demand(),
        "a function that refused grows only by probing"
    );
    assert_eq!(l.current(), 3);
}
