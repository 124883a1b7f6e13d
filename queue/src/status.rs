//! Call status: what became of each asynchronous call, kept in the stream `FLOTILLA_STATUS` (one
//! subject per call, the last message only, for the status retention) so a client can ask without
//! running a callback receiver. The gateway writes `queued` when it accepts a call and `cancelled`
//! when a client cancels one; workers write the rest. Every write is a compare-and-set on the
//! subject's last sequence, so a cancel that races a call's end leaves one state, never both.
//!
//! Invariant: nothing on a call's way reads its status. The gateway hands the `queued` record's
//! sequence to the worker in `Flotilla-Status-Rev`, and each later write expects the sequence of
//! the one before; only a write that finds another writer got there first reads the record.
//! Cancels are also appended to `FLOTILLA_CANCELS`, which every worker follows.
//!
//! Kept results live in `FLOTILLA_RESULTS`, keyed like the status.
//!
//! A record is stored as compact JSON with Unix-nanosecond times; the gateway renders it for
//! clients (RFC 3339 times, the call id).

mod keyed;
pub mod pages;
mod record;

pub use keyed::{
    KeptResult, LastError, last_json, last_json_from_leader, publish_compared, publish_expecting,
};
use pages::{Guard, Page, Written};
pub use record::{
    CANCEL_STREAM, CANCEL_SUBJECT_PREFIX, CallState, Cancel, Known, RESULT_STATUS_HEADER,
    RESULT_STREAM, RESULT_SUBJECT_PREFIX, REVISION_HEADER, Record, ResultKept, STATUS_STREAM,
    STATUS_SUBJECT_PREFIX, StoreError, Stored, Transition, cancel_subject, key, result_subject,
    revision_of, status_subject,
};

/// Writes tried before a transition gives up on a record that keeps changing under it.
const MAX_TRIES: u32 = 8;

/// The status and result streams, as both the gateway and the workers read and write them.
#[derive(Debug, Clone)]
pub struct Store {
    js: async_nats::jetstream::Context,
    status: async_nats::jetstream::stream::Stream<()>,
    results: async_nats::jetstream::stream::Stream<()>,
    pages: async_nats::jetstream::stream::Stream<()>,
    writer: pages::Writer,
}

impl Store {
    /// Handles on the streams, which `Topology::ensure_streams` made (no request is sent), and
    /// the page writer's task.
    pub async fn new(js: async_nats::jetstream::Context) -> Result<Self, StoreError> {
        let open = |name: &'static str| {
            let js = js.clone();
            async move { js.get_stream_no_info(name).await.map_err(StoreError::Open) }
        };
        let status = open(STATUS_STREAM).await?;
        let results = open(RESULT_STREAM).await?;
        let pages = open(pages::PAGE_STREAM).await?;
        let writer = pages::Writer::start(js.clone(), pages.clone());
        Ok(Self {
            js,
            status,
            results,
            pages,
            writer,
        })
    }

    /// The call's record, or `None` when it is unknown (or older than the retention, or pushed
    /// out by the budget). For a numbered call the revision is the sequence of the message that
    /// holds the record.
    pub async fn get(&self, call_id: &str) -> Result<Option<Stored>, StoreError> {
        // Any replica answers a direct get, and one still catching up (after a partition or a
        // restart) answers with what it has, which may be behind. A call that is not final there
        // (or unknown) is read again from the stream leader, so a call that ended never reads as
        // still on its way; only a replayed call may briefly read as its previous end.
        if let Some(page) = pages::page_of(call_id) {
            let read = pages::read(&self.pages, &page, page.all(), false).await?;
            let found = pages::resolve(&read.entries, call_id).map(pages::Entry::stored);
            if found.as_ref().is_some_and(|s| s.record.state.is_final()) {
                return Ok(found);
            }
            let read = pages::read(&self.pages, &page, page.all(), true).await?;
            return Ok(pages::resolve(&read.entries, call_id).map(pages::Entry::stored));
        }
        let subject = status_subject(call_id);
        let last: Option<(Record, u64)> = last_json(&self.status, subject.clone()).await?;
        if last.as_ref().is_some_and(|(r, _)| r.state.is_final()) {
            return Ok(last.map(|(record, revision)| Stored { record, revision }));
        }
        let last: Option<(Record, u64)> = last_json_from_leader(&self.status, subject).await?;
        Ok(last.map(|(record, revision)| Stored { record, revision }))
    }

    /// Stores a numbered call's record in its page, grouped with the process's other records.
    /// `guard`: whether it yields to a cancel ([`Written::Cancelled`]).
    pub async fn write_paged(
        &self,
        page: Page,
        record: &Record,
        guard: Guard,
    ) -> Result<Written, StoreError> {
        self.writer.write(page, record, guard).await
    }

    /// As [`Store::write_paged`], with `then` run once the record's fate is known, by the writer;
    /// the caller goes on at once.
    pub fn write_paged_then(&self, page: Page, line: pages::Line, guard: Guard, then: pages::Then) {
        self.writer.write_then(page, line, guard, then);
    }

    /// Stores `record` when the call's last record is still at `expect` (0: none yet). `Ok(None)`
    /// when it was not: someone wrote first.
    pub async fn write(&self, record: &Record, expect: u64) -> Result<Option<u64>, StoreError> {
        publish_expecting(
            &self.js,
            status_subject(&record.call_id),
            record.to_json().into(),
            expect,
        )
        .await
        .map_err(StoreError::Write)
    }

    /// Moves the call's record on: `change` sees the current record and returns the next one, or
    /// `None` to leave it. It starts from what the caller `known`s, reading only when it knows
    /// nothing; when another writer got there first, the record is read and `change` asked again,
    /// so the outcome is as if the writes had been made one after the other.
    pub async fn transition(
        &self,
        call_id: &str,
        known: Known,
        mut change: impl FnMut(Option<&Record>) -> Option<Record>,
    ) -> Result<Transition, StoreError> {
        if let Some(page) = pages::page_of(call_id) {
            return self.transition_paged(page, call_id, change).await;
        }
        let (mut current, mut expect) = match known {
            // Any replica's answer will do: a stale one fails the compare and is read again.
            Known::Unknown => {
                let read = last_json(&self.status, status_subject(call_id))
                    .await?
                    .map(|(record, revision)| Stored { record, revision });
                let expect = read.as_ref().map_or(0, |s| s.revision);
                (read, expect)
            }
            Known::Revision(revision) => (None, revision),
            Known::Stored(stored) => {
                let expect = stored.revision;
                (Some(*stored), expect)
            }
        };
        for _ in 0..MAX_TRIES {
            let Some(next) = change(current.as_ref().map(|s| &s.record)) else {
                return Ok(Transition::Declined(current));
            };
            if let Some(revision) = self.write(&next, expect).await? {
                return Ok(Transition::Written(Stored {
                    record: next,
                    revision,
                }));
            }
            current = self.get(call_id).await?;
            expect = current.as_ref().map_or(0, |s| s.revision);
        }
        Err(StoreError::Contended {
            call_id: call_id.to_owned(),
            tries: MAX_TRIES,
        })
    }

    /// [`Store::transition`] of a numbered call. A cancel is appended to the page's cancels, then
    /// the page is read from the stream leader up to it: the cancel stands unless the call's
    /// end (or an earlier cancel) came first, and a worker's later record fails its compare
    /// against the cancels. Any other change is stored against the page's cancels, like a
    /// worker's.
    async fn transition_paged(
        &self,
        page: Page,
        call_id: &str,
        mut change: impl FnMut(Option<&Record>) -> Option<Record>,
    ) -> Result<Transition, StoreError> {
        for attempt in 0..MAX_TRIES {
            let read = pages::read(&self.pages, &page, page.all(), attempt > 0).await?;
            let current = pages::resolve(&read.entries, call_id).map(pages::Entry::stored);
            let Some(next) = change(current.as_ref().map(|s| &s.record)) else {
                return Ok(Transition::Declined(current));
            };
            let mut payload = next.to_json();
            payload.push(b'\n');
            if next.state == CallState::Cancelled {
                let publish =
                    async { self.js.publish(page.cancels(), payload.into()).await?.await };
                let at = publish.await.map_err(StoreError::Write)?.sequence;
                let mut upto = pages::read(&self.pages, &page, page.all(), true).await?;
                upto.entries.retain(|e| e.seq <= at);
                return Ok(match pages::resolve(&upto.entries, call_id) {
                    Some(first) if first.seq < at => {
                        // It lost: removed, so no worker takes it for a cancel of a later run
                        // (a dead letter replayed). A cancel left behind only costs a worker
                        // a compare; `resolve` still shows the end that came first.
                        if let Err(error) = self.pages.delete_message(at).await {
                            tracing::debug!(%error, call_id, "a cancel that lost was left in its page");
                        }
                        Transition::Declined(Some(first.stored()))
                    }
                    _ => Transition::Written(Stored {
                        record: next,
                        revision: at,
                    }),
                });
            }
            let (records, cancels) = (page.records(), page.cancels());
            let stored = publish_compared(
                &self.js,
                records,
                payload.into(),
                read.last_cancel,
                Some(&cancels),
            )
            .await
            .map_err(StoreError::Write)?;
            if let Some(revision) = stored {
                return Ok(Transition::Written(Stored {
                    record: next,
                    revision,
                }));
            }
        }
        Err(StoreError::Contended {
            call_id: call_id.to_owned(),
            tries: MAX_TRIES,
        })
    }

    /// Removes the record stored at `revision` (a call that was not accepted after all); a
    /// failure is only logged: the record then shows a call that never ran.
    pub async fn forget(&self, revision: u64) {
        if let Err(error) = self.status.delete_message(revision).await {
            tracing::debug!(%error, revision, "status of a call not accepted left in place");
        }
    }

    /// Tells every worker that `cancel.call_id` was cancelled (after its record says so).
    pub async fn announce_cancel(&self, cancel: &Cancel) -> Result<(), StoreError> {
        self.js
            .publish(cancel_subject(&cancel.call_id), cancel.encode().into())
            .await
            .map_err(StoreError::Write)?
            .await
            .map_err(StoreError::Write)?;
        Ok(())
    }

    /// Keeps a call's final answer: `status`, `content_type` and `body`.
    pub async fn keep_result(
        &self,
        call_id: &str,
        status: u16,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<(), StoreError> {
        use async_nats::jetstream::message::PublishMessage;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RESULT_STATUS_HEADER, status.to_string().as_str());
        if let Some(ct) = content_type {
            headers.insert("Content-Type", ct);
        }
        let publish = PublishMessage::build().headers(headers).payload(body);
        self.js
            .send_publish(result_subject(call_id), publish)
            .await
            .map_err(StoreError::Write)?
            .await
            .map_err(StoreError::Write)?;
        Ok(())
    }

    /// A kept result: its status, content type and body; `None` when none is kept.
    pub async fn result(&self, call_id: &str) -> Result<Option<KeptResult>, StoreError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self
            .results
            .direct_get_last_for_subject(result_subject(call_id))
            .await
        {
            Ok(msg) => {
                let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
                Ok(Some(KeptResult {
                    status: header(RESULT_STATUS_HEADER)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(200),
                    content_type: header("Content-Type"),
                    body: msg.payload,
                }))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Read(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_plain_ids_and_encode_the_rest() {
        assert_eq!(key("0b7e-Az_9"), "0b7e-Az_9");
        assert_eq!(key("a.b"), "~612e62");
        assert_eq!(key("a*"), "~612a");
        assert_ne!(key("~61"), key("a"));
        assert_eq!(status_subject("x"), "flotilla.status.x");
        let c = Cancel {
            call_id: "a b?".into(),
            accepted_at: 7,
        };
        assert_eq!(Cancel::decode(c.encode().as_bytes()), Some(c));
        assert_eq!(Cancel::decode(b"x y"), None);
    }

    #[test]
    fn records_round_trip_and_omit_what_is_unset() {
        let r = Record::queued("c1", "echo", 5, None);
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(!json.contains("status\""), "{json}");
        assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);
        let mut d = r.clone();
        d.state = CallState::Dead;
        d.result = Some(ResultKept::TooLarge { bytes: 9, limit: 4 });
        assert_eq!(Record::from_json(&d.to_json()).unwrap(), d);
        assert!(CallState::Cancelled.is_final() && !CallState::Retrying.is_final());
    }

    #[test]
    fn records_are_written_as_compact_json_in_field_order() {
        let r = Record::queued("c1", "echo", 5, None);
        assert_eq!(
            String::from_utf8(r.to_json()).unwrap(),
            r#"{"call_id":"c1","function":"echo","state":"queued","attempts":0,"accepted_at":5,"updated_at":5}"#
        );
        let mut k = Record::queued("c2", "echo", 1, Some("b1"))
            .with_priority(crate::priority::Priority::High)
            .with_key(Some(&crate::FairnessKey::parse("tenant-7").unwrap()));
        k.result = Some(ResultKept::TooLarge { bytes: 9, limit: 4 });
        assert_eq!(
            String::from_utf8(k.to_json()).unwrap(),
            r#"{"call_id":"c2","function":"echo","state":"queued","attempts":0,"accepted_at":1,"updated_at":1,"batch_id":"b1","result":{"kept":"too_large","bytes":9,"limit":4},"priority":"high","fairness_key":"tenant-7"}"#
        );
    }

    #[test]
    fn every_field_and_any_text_survive_the_round_trip() {
        for (reason, result) in [
            ("plain", ResultKept::Yes),
            (
                "quote \" backslash \\ tab \t nul \u{0} line\n",
                ResultKept::No,
            ),
            (
                "ünïcödé ✓ and \u{7f}",
                ResultKept::TooLarge {
                    bytes: 0,
                    limit: u64::MAX,
                },
            ),
        ] {
            let mut r = Record::queued("id \"x\"", "fn\\1", u128::MAX, Some(reason))
                .with_priority(crate::priority::Priority::Low)
                .with_key(Some(&crate::FairnessKey::parse("k").unwrap()));
            r.state = CallState::Dead;
            r.attempts = u32::MAX;
            r.updated_at = u128::from(u64::MAX) + 1;
            r.status = Some(u16::MAX);
            r.not_before = Some(0);
            r.next_attempt_at = Some(u128::from(u64::MAX));
            r.reason = Some(reason.to_owned());
            r.dead_kind = Some(reason.to_owned());
            r.result = Some(result);
            let json = r.to_json();
            assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
            assert_eq!(Record::from_json(&json).unwrap(), r);
        }
    }
}
