//! Leases on shared state: the instances' heartbeats, the lease round that
//! renews, gives back and takes subscriptions (a fair share each), and
//! leaving. The fence that every watermark move and outbox delete checks is
//! in `postgres.rs`, beside those writes.

use super::*;

impl PgStore {
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = self
            .query(
                "reading instances",
                "SELECT id, host, pid, (extract(epoch FROM started_at) * 1000000)::bigint,
                        (extract(epoch FROM expires_at) * 1000000)::bigint, expires_at > now()
                 FROM instance ORDER BY started_at, id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| InstanceRow {
                id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                started_at: micros_to_ts(r.get(3)),
                expires_at: micros_to_ts(r.get(4)),
                live: r.get(5),
            })
            .collect())
    }

    /// See [`super::Store::lease_round`]. Not retried: the next round is
    /// lease/3 away, and a round that fails for a whole lease drops them all.
    pub async fn lease_round(
        &self,
        configured: &[Arc<str>],
        lease: Duration,
        share: Share,
    ) -> Result<LeaseReport, StoreError> {
        let secs = lease.as_secs_f64();
        let c = self.client(LEASE_ROUND).await?;
        self.heartbeat(&c, secs).await?;
        let ids: Vec<String> = configured.iter().map(|s| s.to_string()).collect();
        let wanted = self.owed(&c, &ids).await?;
        self.give_back(&c, &wanted).await?;
        let mut mine = self.renew(&c, secs).await?;
        let live = self.live_instances(&c).await?;
        let share = match share {
            Share::Fair => wanted.len().div_ceil(live),
            Share::All => wanted.len(),
        };
        if mine.len() > share {
            self.set_aside(&mut mine, share);
        } else if mine.len() < share {
            self.take_free(&c, &wanted, &mut mine, share, secs).await?;
        }
        let mine = share_ids(mine, configured);
        self.held.send_if_modified(|h| {
            let changed = *h != mine;
            h.clone_from(&mine);
            changed
        });
        // Instances gone for a day are forgotten, with their read limits.
        let _ = c
            .execute(
                "WITH gone AS (
                     DELETE FROM instance WHERE expires_at < now() - interval '1 day'
                     RETURNING id)
                 DELETE FROM read_limit WHERE instance IN (SELECT id FROM gone)",
                &[],
            )
            .await;
        Ok(LeaseReport {
            held: mine,
            live,
            share,
        })
    }

    /// This instance's row in `instance`, its expiry pushed a lease ahead:
    /// the count of live instances (and so each one's share) follows it.
    async fn heartbeat(&self, c: &Client, secs: f64) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO instance (id, host, pid, started_at, expires_at)
             VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4))
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            &[&self.me.id, &self.me.host, &i64::from(self.me.pid), &secs],
        )
        .await
        .ctx(LEASE_ROUND)?;
        Ok(())
    }

    /// The subscriptions to lease: the configured ones (`wanted`), then those
    /// no longer configured with events still in the outbox.
    async fn owed(&self, c: &Client, wanted: &[String]) -> Result<Vec<String>, StoreError> {
        // Events a subscription left in the outbox when it was removed from
        // the configuration are still owed to Guardrails: such a subscription
        // is leased like the configured ones, and its events delivered (it is
        // never polled: the supervisor starts only configured subscriptions).
        let orphans: Vec<String> = lease_ids(
            c,
            "WITH RECURSIVE subs AS (
                     (SELECT subscription_id AS s FROM outbox ORDER BY subscription_id LIMIT 1)
                     UNION ALL
                     SELECT (SELECT subscription_id FROM outbox WHERE subscription_id > subs.s
                             ORDER BY subscription_id LIMIT 1)
                     FROM subs WHERE subs.s IS NOT NULL)
                 SELECT s FROM subs WHERE s IS NOT NULL AND NOT s = ANY($1)",
            &[&wanted],
        )
        .await?;
        Ok(wanted.iter().cloned().chain(orphans).collect())
    }

    /// Deletes the leases the last round set aside (they had a lease/3 to
    /// stop) and those on subscriptions no longer `wanted`.
    async fn give_back(&self, c: &Client, wanted: &[String]) -> Result<(), StoreError> {
        let releasing: Vec<String> = self
            .releasing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        c.execute(
            "DELETE FROM lease WHERE holder = $1 AND (subscription_id = ANY($2) OR NOT subscription_id = ANY($3))",
            &[&self.me.id, &releasing, &wanted],
        )
        .await
        .ctx(LEASE_ROUND)?;
        self.releasing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Pushes every lease this instance holds a lease ahead; returns them.
    async fn renew(&self, c: &Client, secs: f64) -> Result<BTreeSet<String>, StoreError> {
        lease_ids(
            c,
            "UPDATE lease SET expires_at = now() + make_interval(secs => $2) WHERE holder = $1
                 RETURNING subscription_id",
            &[&self.me.id, &secs],
        )
        .await
    }

    /// Instances whose heartbeat has not expired, this one included (at least 1).
    async fn live_instances(&self, c: &Client) -> Result<usize, StoreError> {
        let live: i64 = c
            .query_one(
                "SELECT count(*) FROM instance WHERE expires_at > now()",
                &[],
            )
            .await
            .ctx(LEASE_ROUND)?
            .get(0);
        Ok(usize::try_from(live).unwrap_or(1).max(1))
    }

    /// Sets the excess over `share` aside: no longer polled from now, given
    /// back at the next round.
    fn set_aside(&self, mine: &mut BTreeSet<String>, share: usize) {
        let excess: Vec<String> = mine.iter().skip(share).cloned().collect();
        let mut r = self.releasing.lock().unwrap_or_else(|p| p.into_inner());
        for s in excess {
            mine.remove(&s);
            r.insert(s);
        }
    }

    /// Takes free (unleased or expired) leases on `wanted` subscriptions
    /// until `mine` reaches `share`.
    async fn take_free(
        &self,
        c: &Client,
        wanted: &[String],
        mine: &mut BTreeSet<String>,
        share: usize,
        secs: f64,
    ) -> Result<(), StoreError> {
        let mut free: Vec<String> = lease_ids(
            c,
            "SELECT s FROM unnest($1::text[]) AS s
                 WHERE NOT EXISTS (SELECT 1 FROM lease WHERE subscription_id = s AND expires_at >= now())",
            &[&wanted],
        )
        .await?;
        // Start somewhere random, so that instances taking at once mostly
        // reach for different subscriptions.
        if !free.is_empty() {
            let at = fastrand::usize(..free.len());
            free.rotate_left(at);
        }
        // As many at once as the share still needs, in one statement (one
        // per subscription took 5,000 round trips at 10,000 subscriptions);
        // again with the next ones for any another instance took first.
        let mut free = free.as_slice();
        while mine.len() < share && !free.is_empty() {
            let (batch, rest) = free.split_at((share - mine.len()).min(free.len()));
            free = rest;
            // Locked in id order, so that two instances taking overlapping
            // batches wait for each other rather than deadlock.
            let mut batch = batch.to_vec();
            batch.sort_unstable();
            let taken: Vec<String> = lease_ids(
                c,
                "INSERT INTO lease (subscription_id, holder, expires_at)
                 SELECT s, $2, now() + make_interval(secs => $3)
                 FROM unnest($1::text[]) AS s ORDER BY s
                 ON CONFLICT (subscription_id) DO UPDATE
                 SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE lease.expires_at < now() OR lease.holder = excluded.holder
                 RETURNING subscription_id",
                &[&batch, &self.me.id, &secs],
            )
            .await?;
            // The supervisor says which it now polls, in one line for many.
            tracing::debug!(taken = taken.len(), asked = batch.len(), "took leases");
            mine.extend(taken);
        }
        Ok(())
    }

    pub async fn leave(&self) -> Result<(), StoreError> {
        let c = self.client("giving up leases").await?;
        c.execute("DELETE FROM lease WHERE holder = $1", &[&self.me.id])
            .await
            .ctx("giving up leases")?;
        c.execute("DELETE FROM instance WHERE id = $1", &[&self.me.id])
            .await
            .ctx("giving up leases")?;
        c.execute("DELETE FROM read_limit WHERE instance = $1", &[&self.me.id])
            .await
            .ctx("giving up leases")?;
        Ok(())
    }
}

/// `held` as the configuration's ids (shared, not copied), and any other
/// (a subscription no longer configured, with events still owed) as its own.
fn share_ids(held: BTreeSet<String>, configured: &[Arc<str>]) -> BTreeSet<Arc<str>> {
    let configured: BTreeSet<Arc<str>> = configured.iter().cloned().collect();
    held.into_iter()
        .map(|s| match configured.get(s.as_str()) {
            Some(c) => Arc::clone(c),
            None => Arc::from(s),
        })
        .collect()
}

/// The subscription ids (the first column) a lease round's statement returns.
async fn lease_ids<T: FromIterator<String>>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<T, StoreError> {
    Ok(c.query(sql, params)
        .await
        .ctx(LEASE_ROUND)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
