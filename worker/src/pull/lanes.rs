//! Which of a waiting function's priority lanes its pull loop asks next, as a plain struct. Calls
//! of each priority wait in a lane of their own (`subjects::wait_lane_subject`), each with its own
//! consumer; every free slot goes to the highest lane with calls waiting, so a `high` call starts
//! before any waiting `normal` one, and a `low` one only once no `normal` one waits.
//!
//! A function whose calls never asked for a priority (this replica has seen none: [`LaneMarks`])
//! is pulled exactly as before lanes existed: long polls on the normal lane, several open at once.
//! Once it has, the loop asks the highest lane it believes holds calls with a request that answers
//! at once (`no_wait`), one open request per lane, so no slot is promised to a lane that turns
//! out empty; when it believes every lane empty it polls the normal lane briefly ([`LANE_POLL`]),
//! where most calls arrive. A lane is believed to hold calls from the moment a call is moved to
//! it (a mark, counted so a mark made while a request was out is not forgotten), or its consumer
//! or the wait stream shows calls in it, until a request to it ends with nothing to deliver.
//!
//! Invariant: no I/O and no clock; the loop in `pull.rs` does what it says.

use std::time::Duration;

use flotilla_queue::Priority;

use crate::functions::LaneMarks;

/// How long the normal lane is polled when every lane seems empty, once lanes are in use: a call
/// moved to another lane meanwhile waits at most this long for the next request.
pub(crate) const LANE_POLL: Duration = Duration::from_millis(250);

/// Which requests a reply subject (`<inbox>.<token>`) answers for: a lane's, or the long polls
/// of the normal lane sent before lanes were in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Lane(Priority),
    Before,
}

impl Asked {
    /// The lane the requests ask of (long polls of before ask the normal one).
    pub fn lane(self) -> Priority {
        match self {
            Self::Lane(p) => p,
            Self::Before => Priority::Normal,
        }
    }

    /// The reply subject's last token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Lane(Priority::High) => "h",
            Self::Lane(Priority::Normal) => "n",
            Self::Lane(Priority::Low) => "l",
            Self::Before => "b",
        }
    }

    /// What the reply subject `subject` of `inbox` answers for.
    pub fn of_reply(inbox: &str, subject: &str) -> Option<Self> {
        match subject.strip_prefix(inbox)?.strip_prefix('.')? {
            "h" => Some(Self::Lane(Priority::High)),
            "n" => Some(Self::Lane(Priority::Normal)),
            "l" => Some(Self::Lane(Priority::Low)),
            "b" => Some(Self::Before),
            _ => None,
        }
    }
}

/// The request the loop sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// No call asked for a priority: long polls on the normal lane, as many open as the plan says.
    Normal,
    /// A request that answers at once, to this lane.
    Lane(Priority),
    /// Every lane seems empty: a short poll of the normal lane.
    Poll,
    /// The lane to serve next has a request open: wait for its answer.
    Hold,
}

/// One wait loop's view of its function's lanes.
#[derive(Debug)]
pub(crate) struct Lanes {
    /// Messages asked of each lane and neither arrived nor given up by the server.
    out: [usize; 3],
    /// Likewise for the long polls sent before lanes were in use (`Ask::Normal`).
    before: usize,
    /// The lane's mark when a request to it last found nothing (`None`: it may hold calls).
    empty_at: [Option<u64>; 3],
    /// The lane's mark when the last request to it was sent.
    sent_mark: [u64; 3],
}

impl Lanes {
    /// Calls are known to wait in the normal lane only (the lane every earlier release used);
    /// the others count from their first mark.
    pub fn new() -> Self {
        Self {
            out: [0; 3],
            before: 0,
            empty_at: [Some(0), None, Some(0)],
            sent_mark: [0; 3],
        }
    }

    fn may_hold_calls(&self, p: Priority, marks: &LaneMarks, parked: [bool; 3]) -> bool {
        parked[p.index()] || self.empty_at[p.index()] != Some(marks.mark_of(p))
    }

    /// What to ask next. `parked` says which lanes have keys whose calls may be claimed now (see
    /// `keys.rs`): such a lane is asked as one that holds calls, and its calls are claimed into
    /// it first.
    pub fn ask(&self, marks: &LaneMarks, parked: [bool; 3]) -> Ask {
        if !marks.used() {
            return Ask::Normal;
        }
        for p in Priority::ALL {
            if self.may_hold_calls(p, marks, parked) {
                return if self.out[p.index()] > 0 {
                    Ask::Hold
                } else {
                    Ask::Lane(p)
                };
            }
        }
        if self.out[Priority::Normal.index()] > 0 {
            Ask::Hold
        } else {
            Ask::Poll
        }
    }

    /// `n` messages were asked: of lane `p`, or by a long poll of before lanes.
    pub fn requested(&mut self, asked: Asked, n: usize, marks: &LaneMarks) {
        match asked {
            Asked::Lane(p) => {
                self.out[p.index()] += n;
                self.sent_mark[p.index()] = marks.mark_of(p);
            }
            Asked::Before => self.before += n,
        }
    }

    /// A message of lane `p` arrived (a normal one counts against a long poll of before lanes
    /// once the normal lane's own requests are answered).
    pub fn arrived(&mut self, p: Priority) {
        let out = match p {
            Priority::Normal if self.out[p.index()] == 0 => &mut self.before,
            p => &mut self.out[p.index()],
        };
        *out = out.saturating_sub(1);
    }

    /// Lanes came into use while long polls of before were open: they may hold every free slot
    /// until they expire (up to 30 s). They are given up here, so the slots serve the lanes at
    /// once; a call one of them still delivers waits for a slot like any call beyond what was
    /// asked. Returns the messages given up.
    pub fn forget_before(&mut self) -> usize {
        std::mem::take(&mut self.before)
    }

    /// A request to lane `p` ended with `unfulfilled` messages it will not deliver (`None`: every
    /// message still asked of the lane, which is what a request that answers at once leaves).
    /// Returns the messages given up. A lane that had less than was asked is taken for empty,
    /// whatever the server's reason (nothing there, other requests first, the consumer at its
    /// limit): asking again at once would spin, and the next mark or reading asks again.
    pub fn ended(&mut self, asked: Asked, unfulfilled: Option<usize>) -> usize {
        let out = match asked {
            Asked::Lane(p) => &mut self.out[p.index()],
            Asked::Before => &mut self.before,
        };
        let given_up = unfulfilled.unwrap_or(*out).min(*out);
        *out -= given_up;
        if let Asked::Lane(p) = asked
            && given_up > 0
        {
            self.empty_at[p.index()] = Some(self.sent_mark[p.index()]);
        }
        given_up
    }

    /// The open requests are gone (NATS went away): nothing is asked of any lane.
    pub fn lost(&mut self) {
        self.out = [0; 3];
        self.before = 0;
    }

    /// The lane's consumer shows calls not yet delivered.
    pub fn pending(&mut self, p: Priority) {
        self.empty_at[p.index()] = None;
    }

    /// Messages asked of lane `p` and not yet arrived.
    #[cfg(test)]
    pub fn outstanding(&self, p: Priority) -> usize {
        self.out[p.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{High, Low, Normal};

    const NONE: [bool; 3] = [false; 3];

    #[test]
    fn without_a_priority_the_loop_pulls_as_before() {
        let (lanes, marks) = (Lanes::new(), LaneMarks::default());
        marks.mark(Normal);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Normal);
    }

    #[test]
    fn the_highest_lane_with_calls_is_asked_first_and_low_last() {
        let (mut lanes, marks) = (Lanes::new(), LaneMarks::default());
        marks.mark(Low);
        assert_eq!(
            lanes.ask(&marks, NONE),
            Ask::Lane(Normal),
            "normal calls may wait"
        );
        marks.mark(High);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Lane(High));
        lanes.requested(Asked::Lane(High), 2, &marks);
        assert_eq!(
            lanes.ask(&marks, NONE),
            Ask::Hold,
            "one open request a lane"
        );
        lanes.arrived(High);
        assert_eq!(lanes.ended(Asked::Lane(High), None), 1);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Lane(Normal));
        lanes.requested(Asked::Lane(Normal), 4, &marks);
        for _ in 0..4 {
            lanes.arrived(Normal);
        }
        assert_eq!(
            lanes.ask(&marks, NONE),
            Ask::Lane(Normal),
            "a request answered in full leaves the lane as it was"
        );
        lanes.requested(Asked::Lane(Normal), 4, &marks);
        assert_eq!(lanes.ended(Asked::Lane(Normal), None), 4);
        assert_eq!(
            lanes.ask(&marks, NONE),
            Ask::Lane(Low),
            "low only once normal is empty"
        );
        lanes.requested(Asked::Lane(Low), 1, &marks);
        assert_eq!(lanes.ended(Asked::Lane(Low), None), 1);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Poll);
        lanes.requested(Asked::Lane(Normal), 3, &marks);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Hold, "the poll is open");
        assert_eq!(lanes.ended(Asked::Lane(Normal), Some(3)), 3);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Poll);
    }

    #[test]
    fn a_lane_with_keys_whose_turn_may_come_is_asked_though_read_empty() {
        let (mut lanes, marks) = (Lanes::new(), LaneMarks::default());
        marks.saw_key();
        lanes.requested(Asked::Lane(Normal), 2, &marks);
        lanes.ended(Asked::Lane(Normal), None);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Poll);
        assert_eq!(
            lanes.ask(&marks, [false, true, false]),
            Ask::Lane(Normal),
            "its calls are claimed into it, then asked"
        );
        assert_eq!(lanes.ask(&marks, [true, true, false]), Ask::Lane(High));
    }

    #[test]
    fn a_mark_made_while_a_request_was_out_is_not_forgotten() {
        let (mut lanes, marks) = (Lanes::new(), LaneMarks::default());
        marks.mark(High);
        lanes.requested(Asked::Lane(High), 1, &marks);
        // A call lands in the lane after the server looked, before its answer arrived.
        marks.mark(High);
        lanes.ended(Asked::Lane(High), None);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Lane(High));
    }

    #[test]
    fn a_lane_is_asked_again_once_marked_or_read_with_calls() {
        let (mut lanes, marks) = (Lanes::new(), LaneMarks::default());
        marks.mark(High);
        lanes.requested(Asked::Lane(High), 3, &marks);
        assert_eq!(
            lanes.ended(Asked::Lane(High), Some(0)),
            0,
            "a stray notice empties nothing"
        );
        assert_eq!(lanes.ask(&marks, NONE), Ask::Hold);
        lanes.lost();
        assert_eq!(lanes.outstanding(High), 0);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Lane(High));
        lanes.requested(Asked::Lane(High), 3, &marks);
        assert_eq!(lanes.ended(Asked::Lane(High), None), 3);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Lane(Normal));
        lanes.requested(Asked::Lane(Normal), 1, &marks);
        assert_eq!(lanes.ended(Asked::Lane(Normal), None), 1);
        assert_eq!(lanes.ask(&marks, NONE), Ask::Poll);
        lanes.pending(High);
        assert_eq!(
            lanes.ask(&marks, NONE),
            Ask::Lane(High),
            "its consumer shows calls"
        );
        lanes.requested(Asked::Lane(High), 1, &marks);
        lanes.ended(Asked::Lane(High), None);
        marks.mark(High);
        assert_eq!(
            lanes.ask(&marks, NONE),
            Ask::Lane(High),
            "a call moved into it"
        );
    }

    #[test]
    fn polls_of_before_lanes_are_given_up_when_lanes_come_into_use() {
        let (mut lanes, marks) = (Lanes::new(), LaneMarks::default());
        lanes.requested(Asked::Before, 4, &marks);
        lanes.arrived(Normal);
        assert_eq!(lanes.ended(Asked::Before, Some(1)), 1);
        assert_eq!(lanes.forget_before(), 2);
        assert_eq!(
            lanes.ended(Asked::Before, Some(2)),
            0,
            "its late notice gives up nothing more"
        );
        marks.mark(High);
        lanes.requested(Asked::Lane(Normal), 1, &marks);
        lanes.arrived(Normal);
        lanes.arrived(Normal);
        assert_eq!(
            lanes.outstanding(Normal),
            0,
            "a late message takes nothing twice"
        );
        for (asked, token) in [
            (Asked::Lane(High), "_INBOX.x.h"),
            (Asked::Lane(Low), "_INBOX.x.l"),
            (Asked::Before, "_INBOX.x.b"),
        ] {
            assert_eq!(Asked::of_reply("_INBOX.x", token), Some(asked));
        }
        assert_eq!(Asked::of_reply("_INBOX.x", "_INBOX.x.q"), None);
        assert_eq!(Asked::of_reply("_INBOX.x", "_INBOX.y.n"), None);
        assert_eq!(Asked::of_reply("_INBOX.x", "_INBOX.x.nn"), None);
    }
}
