//! The replicas of a shard this replica heard from on the presence heartbeat, as a plain struct:
//! who said what, when each was last heard, and where this replica stands among them.
//!
//! Invariant: this replica always counts itself, and every replica orders the ids alike, so the
//! places it hands out are the same in every replica that heard the same others.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::functions::Membership;

/// A replica not heard from for this long (three missed heartbeats and a half) no longer counts.
pub(crate) const PRESENCE_EXPIRY: Duration = Duration::from_millis(3500);

/// The other replicas of the shard, and when each was last heard.
#[derive(Debug)]
pub(crate) struct Roster {
    /// This replica's id: unique per connection, hence per replica and shard.
    me: String,
    others: HashMap<String, Instant>,
}

impl Roster {
    pub fn new(me: String) -> Self {
        Self {
            me,
            others: HashMap::new(),
        }
    }

    /// A heartbeat message `<kind> <id>` arrived: `hello` (a replica starts), `bye` (one stops)
    /// or anything else (it still runs). True when it asks for an answer at once (a `hello` of
    /// another replica). This replica's own messages and unreadable ones change nothing.
    pub fn heard(&mut self, payload: &[u8]) -> bool {
        let Some((kind, who)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.split_once(' '))
        else {
            return false;
        };
        if who == self.me {
            return false;
        }
        if kind == "bye" {
            self.others.remove(who);
            return false;
        }
        self.others.insert(who.to_owned(), Instant::now());
        kind == "hello"
    }

    /// Forgets the replicas not heard from within [`PRESENCE_EXPIRY`].
    pub fn expire(&mut self) {
        self.others
            .retain(|_, seen| seen.elapsed() < PRESENCE_EXPIRY);
    }

    /// The replicas counted now, this one included, and this one's place among them by id.
    pub fn membership(&self) -> Membership {
        let before = self.others.keys().filter(|o| o.as_str() < self.me.as_str());
        Membership {
            replicas: u32::try_from(self.others.len() + 1).unwrap_or(u32::MAX),
            index: u32::try_from(before.count()).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(r: &Roster) -> (u32, u32) {
        let m = r.membership();
        (m.replicas, m.index)
    }

    #[tokio::test(start_paused = true)]
    async fn counts_the_replicas_heard_and_orders_them_by_id() {
        let mut r = Roster::new("m".into());
        assert_eq!(at(&r), (1, 0), "alone");
        assert!(r.heard(b"hello z"), "a hello is answered at once");
        assert!(!r.heard(b"beat a"));
        assert_eq!(at(&r), (3, 1), "a sorts before m, z after");
        assert!(!r.heard(b"hello m") && !r.heard(b"garbage") && !r.heard(&[0xff, b' ', b'x']));
        assert_eq!(
            at(&r),
            (3, 1),
            "its own and unreadable messages change nothing"
        );
        assert!(!r.heard(b"bye a"));
        assert_eq!(at(&r), (2, 0), "a replica that says bye leaves at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_falls_silent_drops_out_after_the_expiry() {
        let mut r = Roster::new("m".into());
        r.heard(b"beat a");
        tokio::time::advance(PRESENCE_EXPIRY - Duration::from_millis(1)).await;
        r.heard(b"beat b");
        r.expire();
        assert_eq!(at(&r), (3, 2));
        tokio::time::advance(Duration::from_millis(1)).await;
        r.expire();
        assert_eq!(at(&r), (2, 1), "a went silent");
    }
}
