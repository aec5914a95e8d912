//! The outbox and the dead letters on PostgreSQL: what the forwarder reads
//! and settles (for the subscriptions this instance holds), and what
//! `dead-letters` lists, retries and drops.

use tokio_postgres::types::ToSql;

use super::{Context, PgStore, journal};
use crate::event::{from_nanos, to_nanos};
use crate::store::{DeadLetter, OutboxEvent, StoreError};

impl PgStore {
    pub async fn next_batch(
        &self,
        limit: usize,
        in_flight: &[i64],
        after: Option<&str>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let held: Vec<String> = self.held.borrow().iter().map(|s| s.to_string()).collect();
        if limit == 0 || held.is_empty() {
            return Ok(Vec::new());
        }
        // A read only: retried whole when the connection drops under it (a
        // restart, a failover), like every other statement.
        self.retrying(|| self.read_batch(&held, limit, in_flight, after))
            .await
    }

    /// One attempt at [`Self::next_batch`] for the subscriptions in `held`.
    async fn read_batch(
        &self,
        held: &[String],
        limit: usize,
        in_flight: &[i64],
        after: Option<&str>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let c = &self.client("reading the outbox").await?;
        let subs: Vec<String> = c
            .query(
                "SELECT s FROM unnest($1::text[]) AS s
                 WHERE EXISTS (SELECT 1 FROM outbox WHERE subscription_id = s) ORDER BY s",
                &[&held],
            )
            .await
            .ctx("listing subscriptions with events waiting")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let read = |sub: String, want: usize| async move {
            let n = i64::try_from(want).unwrap_or(i64::MAX);
            let rows = c
                .query(
                    "SELECT seq, subscription_id, event_data_id, entry, attempts FROM outbox
                     WHERE subscription_id = $1 AND seq <> ALL($2)
                     ORDER BY event_ts_ns, seq LIMIT $3",
                    &[&sub, &in_flight, &n],
                )
                .await
                .ctx("reading the outbox")?;
            Ok(rows
                .iter()
                .map(|r| OutboxEvent {
                    seq: r.get(0),
                    subscription_id: r.get(1),
                    event_data_id: r.get(2),
                    entry: r.get(3),
                    attempts: r.get(4),
                })
                .collect())
        };
        crate::store::round_robin(subs, limit, after, read).await
    }

    /// With `journal`, the outcomes are journaled in the same transaction
    /// (`acks` carry the endpoint's HTTP status).
    pub async fn settle(
        &self,
        acks: &[(i64, u16)],
        rejects: &[(i64, String)],
        failures: &[(i64, String)],
        journal: bool,
    ) -> Result<(), StoreError> {
        let reject_seqs: Vec<i64> = rejects.iter().map(|(s, _)| *s).collect();
        let reject_reasons: Vec<&str> = rejects.iter().map(|(_, r)| r.as_str()).collect();
        let fail_seqs: Vec<i64> = failures.iter().map(|(s, _)| *s).collect();
        let fail_reasons: Vec<&str> = failures.iter().map(|(_, r)| r.as_str()).collect();
        let removed: Vec<i64> = acks
            .iter()
            .map(|(s, _)| *s)
            .chain(reject_seqs.iter().copied())
            .collect();
        let (reject_seqs, reject_reasons, fail_seqs, fail_reasons, removed) = (
            &reject_seqs,
            &reject_reasons,
            &fail_seqs,
            &fail_reasons,
            &removed,
        );
        self.retrying(move || async move {
            let mut c = self.client("recording deliveries").await?;
            let tx = c.transaction().await.ctx("starting a transaction")?;
            let subs: Vec<String> = tx
                .query(
                    "SELECT DISTINCT subscription_id FROM outbox WHERE seq = ANY($1) ORDER BY 1",
                    &[removed],
                )
                .await
                .ctx("recording deliveries")?
                .iter()
                .map(|r| r.get(0))
                .collect();
            // The fence notes leases lost (the daemon drops those
            // subscriptions). An outcome is written whoever holds the lease
            // now: the endpoint answered this instance's POST, so an
            // accepted event leaves the outbox rather than being sent again
            // by the new holder (it is late when the state database was out
            // while the endpoint answered, and the lease moved meanwhile).
            self.fence(&tx, &subs).await?;
            if journal {
                journal::settle(&tx, acks, (reject_seqs, reject_reasons), &subs, &self.me.id)
                    .await?;
            }
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = f.reason
                 FROM unnest($1::bigint[], $2::text[]) AS f(seq, reason) WHERE outbox.seq = f.seq",
                &[fail_seqs, fail_reasons],
            )
            .await
            .ctx("noting a failed delivery")?;
            tx.execute(
                "INSERT INTO dead_letter (subscription_id, event_data_id, event_ts_ns, entry, reason, failed_at_ns, journal_id)
                 SELECT o.subscription_id, o.event_data_id, o.event_ts_ns, o.entry, r.reason, $3, o.journal_id
                 FROM unnest($1::bigint[], $2::text[]) AS r(seq, reason) JOIN outbox o ON o.seq = r.seq
                 ORDER BY r.seq",
                &[reject_seqs, reject_reasons, &to_nanos(chrono::Utc::now())],
            )
            .await
            .ctx("dead-lettering an event")?;
            tx.execute("DELETE FROM outbox WHERE seq = ANY($1)", &[removed])
            .await
            .ctx("acknowledging an event")?;
            tx.commit().await.ctx("recording deliveries")
        })
        .await
    }

    pub async fn retry_dead_letters(&self, seqs: Option<&[i64]>) -> Result<usize, StoreError> {
        // On a state with a journal, its rows are `queued` again in the same
        // statement (every part of it sees the dead letters before the delete).
        let now = to_nanos(chrono::Utc::now());
        let journaled = self.journal_span().await?.is_some();
        let (requeued, link) = if journaled {
            (journal::requeued(), ", journal_id")
        } else {
            (String::new(), "")
        };
        let params: &[&(dyn ToSql + Sync)] = if journaled { &[&seqs, &now] } else { &[&seqs] };
        let n = self
            .execute(
                "re-queueing dead letters",
                &format!(
                    "WITH {requeued}moved AS (
                         DELETE FROM dead_letter WHERE $1::bigint[] IS NULL OR seq = ANY($1)
                         RETURNING seq, subscription_id, event_data_id, event_ts_ns, failed_at_ns, entry{link})
                     INSERT INTO outbox (subscription_id, event_data_id, event_ts_ns, entry{link})
                     SELECT subscription_id, event_data_id, COALESCE(event_ts_ns, failed_at_ns), entry{link}
                     FROM moved ORDER BY seq"
                ),
                params,
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub async fn drop_dead_letters(&self, seqs: Option<&[i64]>) -> Result<usize, StoreError> {
        let n = self
            .execute(
                "dropping dead letters",
                "DELETE FROM dead_letter WHERE $1::bigint[] IS NULL OR seq = ANY($1)",
                &[&seqs],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        let rows = self
            .query("counting the outbox", "SELECT count(*) FROM outbox", &[])
            .await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self
            .query(
                "reading dead letters",
                "SELECT seq, subscription_id, event_data_id, reason, failed_at_ns FROM dead_letter ORDER BY seq",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                seq: r.get(0),
                subscription_id: r.get(1),
                event_data_id: r.get(2),
                reason: r.get(3),
                failed_at: from_nanos(r.get(4)),
            })
            .collect())
    }
}
