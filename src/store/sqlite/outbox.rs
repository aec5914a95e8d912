//! The outbox and the dead letters on SQLite: what the forwarder reads and
//! settles, and what `dead-letters` lists, retries and drops.

use rusqlite::{OptionalExtension, params};

use super::{Context, SqliteStore, journal};
use crate::event::{from_nanos, to_nanos};
use crate::store::{DeadLetter, OutboxEvent, StoreError};

impl SqliteStore {
    /// Up to `limit` events waiting for delivery, skipping `in_flight`, shared
    /// round-robin among the subscriptions that have any waiting
    /// ([`super::round_robin`]).
    pub fn next_batch(
        &self,
        limit: usize,
        in_flight: &[i64],
        after: Option<&str>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.with(|c| {
            // The subscriptions with events waiting: a loose index scan, one
            // index lookup per subscription, however deep the backlog.
            let subs: Vec<String> = {
                let mut stmt = c
                    .prepare_cached(
                        "WITH RECURSIVE s(id) AS (
                             SELECT MIN(subscription_id) FROM outbox
                             UNION ALL
                             SELECT (SELECT MIN(subscription_id) FROM outbox WHERE subscription_id > s.id)
                             FROM s WHERE s.id IS NOT NULL)
                         SELECT id FROM s WHERE id IS NOT NULL",
                    )
                    .ctx("listing subscriptions with events waiting")?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .ctx("listing subscriptions with events waiting")?;
                rows.collect::<Result<_, _>>()
                    .ctx("listing subscriptions with events waiting")?
            };
            // The order from the index alone (it holds `seq`), then the rows
            // not skipped by their key: the events in flight are the oldest,
            // and reading their entries again at every refill was most of
            // the read.
            let mut order = c
                .prepare_cached(
                    "SELECT seq FROM outbox WHERE subscription_id = ?1
                     ORDER BY event_ts_ns, seq LIMIT ?2",
                )
                .ctx("preparing outbox read")?;
            let mut row = c
                .prepare_cached(
                    "SELECT seq, subscription_id, event_data_id, entry, attempts FROM outbox
                     WHERE seq = ?1",
                )
                .ctx("preparing outbox read")?;
            let skip: std::collections::HashSet<i64> = in_flight.iter().copied().collect();
            let mut read = |sub: String, want: usize| -> Result<Vec<OutboxEvent>, StoreError> {
                let n = i64::try_from(want + skip.len()).unwrap_or(i64::MAX);
                let mut seqs = Vec::with_capacity(want);
                for seq in order
                    .query_map(params![sub, n], |r| r.get::<_, i64>(0))
                    .ctx("reading the outbox")?
                {
                    let seq = seq.ctx("reading the outbox")?;
                    if !skip.contains(&seq) {
                        seqs.push(seq);
                        if seqs.len() == want {
                            break;
                        }
                    }
                }
                let mut out = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    // Gone since the first read (another process): skipped.
                    let ev = row
                        .query_row([seq], |r| {
                            Ok(OutboxEvent {
                                seq: r.get(0)?,
                                subscription_id: r.get(1)?,
                                event_data_id: r.get(2)?,
                                entry: r.get(3)?,
                                attempts: r.get(4)?,
                            })
                        })
                        .optional()
                        .ctx("reading the outbox")?;
                    out.extend(ev);
                }
                Ok(out)
            };
            // The reads are synchronous: every future is ready at once.
            futures::executor::block_on(crate::store::round_robin(subs, limit, after, |sub, want| {
                std::future::ready(read(sub, want))
            }))
        })
    }

    /// Records delivery outcomes in one transaction: acknowledged events are
    /// forgotten, rejected ones become dead letters, failed ones count an attempt.
    /// With `journal`, the outcomes are journaled in it too (`acks` carry
    /// the endpoint's HTTP status).
    pub fn settle(
        &self,
        acks: &[(i64, u16)],
        rejects: &[(i64, String)],
        failures: &[(i64, String)],
        journal: bool,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            if journal {
                journal::settle(&tx, acks, rejects, chrono::Utc::now())?;
            }
            {
                let mut del = tx
                    .prepare_cached("DELETE FROM outbox WHERE seq = ?1")
                    .ctx("acknowledging an event")?;
                for (seq, _) in acks {
                    del.execute([seq]).ctx("acknowledging an event")?;
                }
                let mut fail = tx
                    .prepare_cached("UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1")
                    .ctx("noting a failed delivery")?;
                for (seq, error) in failures {
                    fail.execute(params![seq, error]).ctx("noting a failed delivery")?;
                }
                for (seq, reason) in rejects {
                    tx.execute(
                        "INSERT INTO dead_letter (subscription_id, event_data_id, event_ts_ns, entry, reason, failed_at_ns, journal_id)
                         SELECT subscription_id, event_data_id, event_ts_ns, entry, ?2, ?3, journal_id FROM outbox WHERE seq = ?1",
                        params![seq, reason, to_nanos(chrono::Utc::now())],
                    )
                    .ctx("dead-lettering an event")?;
                    del.execute([seq]).ctx("dead-lettering an event")?;
                }
            }
            tx.commit().ctx("recording deliveries")?;
            Ok(())
        })
    }

    /// The endpoint acknowledged the event: forget it.
    pub fn ack(&self, seq: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM outbox WHERE seq = ?1", [seq])
                .ctx("acknowledging an event")?;
            Ok(())
        })
    }

    /// A delivery attempt failed in a way worth retrying.
    pub fn note_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
                params![seq, error],
            )
            .ctx("noting a failed delivery")?;
            Ok(())
        })
    }

    /// The endpoint rejected the event for good: move it to the dead letters.
    pub fn reject(&self, seq: i64, reason: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            tx.execute(
                "INSERT INTO dead_letter (subscription_id, event_data_id, event_ts_ns, entry, reason, failed_at_ns)
                 SELECT subscription_id, event_data_id, event_ts_ns, entry, ?2, ?3 FROM outbox WHERE seq = ?1",
                params![seq, reason, to_nanos(chrono::Utc::now())],
            )
            .ctx("dead-lettering an event")?;
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])
                .ctx("dead-lettering an event")?;
            tx.commit().ctx("dead-lettering an event")?;
            Ok(())
        })
    }

    /// Puts dead letters back in the outbox (all when `seqs` is `None`);
    /// returns how many.
    pub fn retry_dead_letters(&self, seqs: Option<&[i64]>) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            let chosen = chosen_dead_letters(&tx, seqs)?;
            let journaled = journal::exists(&tx)?;
            // A state this build migrated links dead letters to the journal.
            let requeue = if journaled {
                "INSERT INTO outbox (subscription_id, event_data_id, event_ts_ns, entry, journal_id)
                 SELECT subscription_id, event_data_id, COALESCE(event_ts_ns, failed_at_ns), entry, journal_id
                 FROM dead_letter WHERE seq = ?1"
            } else {
                "INSERT INTO outbox (subscription_id, event_data_id, event_ts_ns, entry)
                 SELECT subscription_id, event_data_id, COALESCE(event_ts_ns, failed_at_ns), entry
                 FROM dead_letter WHERE seq = ?1"
            };
            for seq in &chosen {
                if journaled {
                    journal::requeued(&tx, *seq, chrono::Utc::now())?;
                }
                tx.execute(requeue, [seq])
                .ctx("re-queueing a dead letter")?;
                tx.execute("DELETE FROM dead_letter WHERE seq = ?1", [seq])
                    .ctx("re-queueing a dead letter")?;
            }
            tx.commit().ctx("re-queueing dead letters")?;
            Ok(chosen.len())
        })
    }

    /// Deletes dead letters (all when `seqs` is `None`); returns how many.
    pub fn drop_dead_letters(&self, seqs: Option<&[i64]>) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            let chosen = chosen_dead_letters(&tx, seqs)?;
            for seq in &chosen {
                tx.execute("DELETE FROM dead_letter WHERE seq = ?1", [seq])
                    .ctx("dropping a dead letter")?;
            }
            tx.commit().ctx("dropping dead letters")?;
            Ok(chosen.len())
        })
    }

    pub fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
                .ctx("counting the outbox")
        })
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT seq, subscription_id, event_data_id, reason, failed_at_ns FROM dead_letter ORDER BY seq")
                .ctx("reading dead letters")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DeadLetter {
                        seq: r.get(0)?,
                        subscription_id: r.get(1)?,
                        event_data_id: r.get(2)?,
                        reason: r.get(3)?,
                        failed_at: from_nanos(r.get(4)?),
                    })
                })
                .ctx("reading dead letters")?;
            rows.collect::<Result<Vec<_>, _>>().ctx("reading dead letters")
        })
    }
}

/// The dead letters that exist among `seqs` (or all of them).
fn chosen_dead_letters(
    tx: &rusqlite::Transaction<'_>,
    seqs: Option<&[i64]>,
) -> Result<Vec<i64>, StoreError> {
    let mut stmt = tx
        .prepare("SELECT seq FROM dead_letter ORDER BY seq")
        .ctx("reading dead letters")?;
    let all = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .ctx("reading dead letters")?
        .collect::<Result<Vec<i64>, _>>()
        .ctx("reading dead letters")?;
    Ok(match seqs {
        None => all,
        Some(want) => all.into_iter().filter(|s| want.contains(s)).collect(),
    })
}
