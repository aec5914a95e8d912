//! The PostgreSQL backend: state shared by every instance, for running two or
//! more for high availability.
//!
//! The same tables as SQLite (`cursor`, `seen`, `outbox`, `dead_letter`,
//! `detection`) plus `instance` (one heartbeat row per running process) and
//! `lease` (`subscription_id, holder, expires_at`). Leases are taken and
//! renewed on the database's clock (`now()`), never the hosts':
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE lease.expires_at < now() OR
//! lease.holder = $me`. Every transaction that records a page (and so may
//! move a watermark) first reads its lease rows `FOR SHARE`, still naming
//! this instance as holder: a takeover's upsert waits for that transaction
//! and a write after the takeover is refused (the fence). Delivery outcomes
//! are written whoever holds the lease (the endpoint answered this
//! instance's POST: an accepted event leaves the outbox instead of being
//! sent again by the new holder); their transaction notes a lost lease.
//!
//! Connections come from a `deadpool-postgres` pool, which replaces broken
//! ones; a statement that fails because the database went away (restart,
//! failover) is retried for up to [`RETRY_FOR`], and every transaction is safe
//! to repeat (seen ids make a recorded page a no-op, the watermark only moves
//! forward, deletes of gone rows delete nothing). TLS is rustls, trusting the
//! system store or `sslrootcert=`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{
    Advance, Cursor, DetectionNote, Held, Instance, InstanceRow, LeaseNote, LeaseReport,
    ReadLimitNote, Recorded, Share, StoreError, SubscriptionState,
};
use crate::config::{DatabaseTls, DatabaseUrl};
use crate::event::{Entry, Malformed, Timestamp, from_nanos, to_nanos};

mod journal;
mod lease;
mod outbox;
mod tls;

/// The schema this build reads and writes (the `schema_version` table).
pub const PG_SCHEMA_VERSION: i64 = 1;

/// Moves a subscription's watermark and pruning point (never backwards) and
/// forgets the seen ids below the pruning point, if this instance holds the
/// lease (`$2`, locked `FOR SHARE`); returns whether it does. Parameters:
/// subscription, instance id, watermark, prune-before (ns).
const ADVANCE: &str = "WITH held AS (
         SELECT subscription_id FROM lease
         WHERE subscription_id = $1 AND holder = $2 FOR SHARE),
     moved AS (
         UPDATE cursor SET watermark_ns = GREATEST(watermark_ns, $3),
                           pruned_before_ns = GREATEST(pruned_before_ns, $4)
         WHERE subscription_id = $1 AND EXISTS (SELECT 1 FROM held)
         RETURNING pruned_before_ns),
     pruned AS (
         DELETE FROM seen WHERE subscription_id = $1
         AND event_ts_ns < (SELECT pruned_before_ns FROM moved))
     SELECT EXISTS (SELECT 1 FROM held)";

/// How long a statement is retried while the database cannot be reached.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// The context of every statement of a lease round, for its errors.
const LEASE_ROUND: &str = "renewing leases";

/// Serialises schema creation between instances starting together.
const MIGRATION_LOCK: i64 = 0x6161_7070_6f6c_6c72;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursor (
    subscription_id  TEXT PRIMARY KEY,
    watermark_ns     BIGINT NOT NULL,
    pruned_before_ns BIGINT NOT NULL,
    last_poll_at_ns  BIGINT,
    last_result      TEXT
);
CREATE TABLE IF NOT EXISTS seen (
    subscription_id TEXT NOT NULL,
    event_data_id   TEXT NOT NULL,
    event_ts_ns     BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, event_data_id)
);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (subscription_id, event_ts_ns);
CREATE TABLE IF NOT EXISTS outbox (
    seq             BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    event_data_id   TEXT NOT NULL,
    event_ts_ns     BIGINT NOT NULL,
    entry           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_by_subscription ON outbox (subscription_id, event_ts_ns, seq);
CREATE TABLE IF NOT EXISTS detection (
    subscription_id TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    detail          TEXT NOT NULL,
    checked_at_ns   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq             BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    event_data_id   TEXT NOT NULL,
    event_ts_ns     BIGINT,
    entry           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    failed_at_ns    BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS instance (
    id         TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
    subscription_id TEXT PRIMARY KEY,
    holder          TEXT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS read_limit (
    instance            TEXT PRIMARY KEY,
    limit_now           BIGINT NOT NULL,
    cap                 BIGINT NOT NULL,
    in_flight           BIGINT NOT NULL,
    waiting             BIGINT NOT NULL,
    arrivals_per_second DOUBLE PRECISION NOT NULL,
    hold_seconds        DOUBLE PRECISION NOT NULL,
    bound               TEXT NOT NULL,
    noted_at_ns         BIGINT NOT NULL
);
";

trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Postgres { context, source })
    }
}

/// A pool's error, told by its cause (the pool's own wrapper says only
/// that creating a connection failed).
fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(b) => super::error_chain(b),
        other => super::error_chain(other),
    }
}

/// The database went away (restart, failover, a cut connection) or asked
/// for the transaction to be tried again: worth retrying.
fn transient(e: &StoreError) -> bool {
    match e {
        StoreError::Pool { .. } => true,
        StoreError::Postgres { source, .. } => {
            if source.is_closed() {
                return true;
            }
            match source.code() {
                None => source.as_db_error().is_none(),
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01"
                }
            }
        }
        _ => false,
    }
}

fn micros_to_ts(us: i64) -> Timestamp {
    from_nanos(us.saturating_mul(1000))
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    location: String,
    me: Arc<Instance>,
    held: Held,
    /// Leases given back at the last round (its share shrank): no longer
    /// polled, deleted at the next round once their tasks had time to stop.
    releasing: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish()
    }
}

type Client = deadpool_postgres::Object;

impl PgStore {
    /// Connects; with `migrate`, creates or migrates the schema, else only
    /// checks that it is there and not newer than this build's.
    pub async fn open(
        url: &DatabaseUrl,
        me: &Instance,
        held: Held,
        migrate: bool,
    ) -> Result<PgStore, StoreError> {
        let location = url.redacted();
        let (config, tls) = url.connect_config().map_err(|reason| StoreError::Connect {
            location: location.clone(),
            reason,
        })?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            DatabaseTls::Off => {
                let mut config = config;
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(config, tokio_postgres::NoTls, manager_config)
            }
            DatabaseTls::On { mode, root_cert } => {
                let mut config = config;
                config.ssl_mode(mode);
                let tls =
                    tls::rustls_config(root_cert.as_deref()).map_err(|reason| StoreError::Tls {
                        location: location.clone(),
                        reason,
                    })?;
                Manager::from_config(
                    config,
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                    manager_config,
                )
            }
        };
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Connect {
                location: location.clone(),
                reason: super::error_chain(&e),
            })?;
        let store = PgStore {
            pool,
            location,
            me: Arc::new(me.clone()),
            held,
            releasing: Arc::default(),
        };
        // The first connection tells whether the server is there at all.
        drop(store.pool.get().await.map_err(|e| StoreError::Connect {
            location: store.location.clone(),
            reason: pool_error(&e),
        })?);
        if migrate {
            store.migrate().await?;
        } else {
            store.check_schema().await?;
        }
        Ok(store)
    }

    pub fn describe(&self) -> String {
        self.location.clone()
    }

    pub(super) async fn client(&self, context: &'static str) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Pool {
            context,
            reason: pool_error(&e),
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the database has
    /// been unreachable for [`RETRY_FOR`].
    async fn retrying<R, F, Fut>(&self, mut attempt: F) -> Result<R, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<R, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut delay = Duration::from_millis(100);
        loop {
            match attempt().await {
                Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "the state database is unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client("creating the schema").await?;
        let tx = c.transaction().await.ctx("creating the schema")?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .ctx("creating the schema")?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .ctx("creating the schema")?;
        let found: Option<i64> = tx
            .query_one("SELECT max(version) FROM schema_version", &[])
            .await
            .ctx("reading the schema version")?
            .get(0);
        if let Some(found) = found
            && found > PG_SCHEMA_VERSION
        {
            return Err(StoreError::NewerSchema {
                location: self.location.clone(),
                found,
                supported: PG_SCHEMA_VERSION,
            });
        }
        tx.batch_execute(SCHEMA).await.ctx("creating the schema")?;
        tx.batch_execute(journal::SCHEMA)
            .await
            .ctx("creating the schema")?;
        if found != Some(PG_SCHEMA_VERSION) {
            tx.execute("DELETE FROM schema_version", &[])
                .await
                .ctx("noting the schema version")?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&PG_SCHEMA_VERSION],
            )
            .await
            .ctx("noting the schema version")?;
        }
        tx.commit().await.ctx("creating the schema")
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let c = self.client("reading the schema version").await?;
        let exists: bool = c
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .await
            .ctx("reading the schema version")?
            .get(0);
        if !exists {
            return Err(StoreError::NoSchema {
                location: self.location.clone(),
            });
        }
        let found: Option<i64> = c
            .query_one("SELECT max(version) FROM schema_version", &[])
            .await
            .ctx("reading the schema version")?
            .get(0);
        match found {
            Some(found) if found > PG_SCHEMA_VERSION => Err(StoreError::NewerSchema {
                location: self.location.clone(),
                found,
                supported: PG_SCHEMA_VERSION,
            }),
            Some(_) => Ok(()),
            None => Err(StoreError::NoSchema {
                location: self.location.clone(),
            }),
        }
    }

    /// Read-only statements, retried while the database is away.
    async fn query(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.retrying(move || async move {
            let c = self.client(context).await?;
            c.query(sql, params).await.ctx(context)
        })
        .await
    }

    /// One statement that changes something, retried while the database is
    /// away (only statements that are safe to repeat).
    async fn execute(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.retrying(move || async move {
            let c = self.client(context).await?;
            c.execute(sql, params).await.ctx(context)
        })
        .await
    }

    pub async fn cursor(&self, subscription_id: &str) -> Result<Option<Cursor>, StoreError> {
        let rows = self
            .query(
                "reading cursor",
                "SELECT watermark_ns, pruned_before_ns FROM cursor WHERE subscription_id = $1",
                &[&subscription_id],
            )
            .await?;
        Ok(rows.first().map(|r| Cursor {
            watermark: from_nanos(r.get(0)),
            pruned_before: from_nanos(r.get(1)),
        }))
    }

    pub async fn init_cursor(
        &self,
        subscription_id: &str,
        since: Timestamp,
    ) -> Result<Cursor, StoreError> {
        self.execute(
            "creating cursor",
            "INSERT INTO cursor (subscription_id, watermark_ns, pruned_before_ns) VALUES ($1, $2, $2)
             ON CONFLICT (subscription_id) DO NOTHING",
            &[&subscription_id, &to_nanos(since)],
        )
        .await?;
        self.cursor(subscription_id)
            .await?
            .ok_or_else(|| StoreError::Task("the cursor just created is gone".into()))
    }

    /// Drops subscriptions whose fenced write was refused: they are no longer
    /// this instance's to poll or deliver.
    fn lost(&self, subs: &[String]) {
        for s in subs {
            tracing::warn!(
                subscription = %s,
                "the lease on this subscription was lost (another instance took it over): a write was refused; dropping the subscription"
            );
        }
        self.held.send_if_modified(|h| {
            let before = h.len();
            for s in subs {
                h.remove(s.as_str());
            }
            h.len() != before
        });
    }

    /// The fence: of `subs`, those whose lease this instance holds, locked
    /// against a takeover until the transaction ends.
    ///
    /// Held means the row still names this instance, expired or not: an
    /// expired lease nobody has taken over is still this instance's (a
    /// takeover rewrites the holder, and waits for this lock), so nothing
    /// has moved that state since. Refusing it would only make an instance
    /// whose renewals were late (a slow database, a loaded host) drop the
    /// outcome of POSTs the endpoint already acknowledged, and send them
    /// again once it renews.
    async fn fence(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        subs: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let rows = tx
            .query(
                "SELECT subscription_id FROM lease
                 WHERE subscription_id = ANY($1) AND holder = $2
                 ORDER BY subscription_id FOR SHARE",
                &[&subs, &self.me.id],
            )
            .await
            .ctx("checking the lease")?;
        let held: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let gone: Vec<String> = subs.iter().filter(|s| !held.contains(s)).cloned().collect();
        if !gone.is_empty() {
            self.lost(&gone);
        }
        Ok(held)
    }

    /// With `journal`, the new entries and the `skipped` ones are journaled
    /// in the page's transaction too.
    pub async fn record_page(
        &self,
        subscription_id: &str,
        entries: &[Entry],
        skipped: &[Entry],
        malformed: &[(Malformed, Timestamp)],
        advance: Option<Advance>,
        journal: bool,
    ) -> Result<Recorded, StoreError> {
        // A page may name an id twice: the first is the one recorded.
        let mut unique: Vec<&Entry> = Vec::with_capacity(entries.len());
        let mut ids = std::collections::HashSet::new();
        for e in entries {
            if ids.insert(e.event_data_id.as_str()) {
                unique.push(e);
            }
        }
        let ids: Vec<&str> = unique.iter().map(|e| e.event_data_id.as_str()).collect();
        let times: Vec<i64> = unique.iter().map(|e| to_nanos(e.event_timestamp)).collect();
        let bodies: Vec<&str> = unique.iter().map(|e| e.raw.get()).collect();
        let (ids, times, bodies) = (&ids, &times, &bodies);
        let skipped = if journal { skipped } else { &[] };
        let unique = &unique;
        if entries.is_empty() && malformed.is_empty() && skipped.is_empty() {
            return self.record_empty_page(subscription_id, advance).await;
        }
        self.retrying(move || async move {
            let mut c = self.client("committing a page").await?;
            let tx = c.transaction().await.ctx("starting a transaction")?;
            let sub = subscription_id.to_string();
            if self.fence(&tx, std::slice::from_ref(&sub)).await?.is_empty() {
                return Err(StoreError::LeaseLost { subscription: sub });
            }
            let now = chrono::Utc::now();
            let new = if journal {
                journal::queue(&tx, subscription_id, unique, now).await?
            } else {
                let n = tx
                    .execute(
                        "WITH page AS (
                             SELECT * FROM unnest($2::text[], $3::bigint[], $4::text[]) AS p(id, ts, entry)),
                         fresh AS (
                             INSERT INTO seen (subscription_id, event_data_id, event_ts_ns)
                             SELECT $1, id, ts FROM page
                             ON CONFLICT DO NOTHING
                             RETURNING event_data_id)
                         INSERT INTO outbox (subscription_id, event_data_id, event_ts_ns, entry)
                         SELECT $1, page.id, page.ts, page.entry FROM page JOIN fresh ON fresh.event_data_id = page.id
                         ORDER BY page.ts",
                        &[&subscription_id, ids, times, bodies],
                    )
                    .await
                    .ctx("queueing events")?;
                usize::try_from(n).unwrap_or(usize::MAX)
            };
            if journal {
                journal::skipped(&tx, subscription_id, skipped, now).await?;
            }
            let rec = Recorded {
                new,
                duplicate: entries.len() - new.min(entries.len()),
                quarantined: quarantine(&tx, subscription_id, malformed).await?,
            };
            if let Some(a) = advance {
                let (watermark, prune_before) = (to_nanos(a.watermark), to_nanos(a.prune_before));
                // Fenced above in this transaction: the lease is still held.
                tx.query_one(ADVANCE, &[&subscription_id, &self.me.id, &watermark, &prune_before])
                    .await
                    .ctx("moving the watermark")?;
            }
            tx.commit().await.ctx("committing a page")?;
            Ok(rec)
        })
        .await
    }

    /// A page with nothing to queue (every poll of an idle subscription):
    /// the fence, the watermark move and the pruning in one statement
    /// ([`ADVANCE`]), one round trip and one commit instead of a transaction.
    async fn record_empty_page(
        &self,
        subscription_id: &str,
        advance: Option<Advance>,
    ) -> Result<Recorded, StoreError> {
        let Some(a) = advance else {
            return Ok(Recorded::default());
        };
        let (watermark, prune_before) = (to_nanos(a.watermark), to_nanos(a.prune_before));
        let held: bool = self
            .retrying(|| async {
                let c = self.client("committing a page").await?;
                c.query_one(
                    ADVANCE,
                    &[&subscription_id, &self.me.id, &watermark, &prune_before],
                )
                .await
                .ctx("moving the watermark")
                .map(|r| r.get(0))
            })
            .await?;
        if !held {
            let sub = subscription_id.to_string();
            self.lost(std::slice::from_ref(&sub));
            return Err(StoreError::LeaseLost { subscription: sub });
        }
        Ok(Recorded::default())
    }

    pub async fn note_poll(
        &self,
        subscription_id: &str,
        at: Timestamp,
        result: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "noting a poll",
            "UPDATE cursor SET last_poll_at_ns = $2, last_result = $3 WHERE subscription_id = $1",
            &[&subscription_id, &to_nanos(at), &result],
        )
        .await
        .map(drop)
    }

    pub async fn note_detection(
        &self,
        subscription_id: &str,
        at: Timestamp,
        state: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "noting an event handler check",
            "INSERT INTO detection (subscription_id, state, detail, checked_at_ns) VALUES ($1, $2, $3, $4)
             ON CONFLICT (subscription_id) DO UPDATE
             SET state = excluded.state, detail = excluded.detail, checked_at_ns = excluded.checked_at_ns",
            &[&subscription_id, &state, &detail, &to_nanos(at)],
        )
        .await
        .map(drop)
    }

    /// This instance's row.
    pub async fn note_read_limit(&self, n: &ReadLimitNote) -> Result<(), StoreError> {
        self.execute(
            "noting the read limit",
            "INSERT INTO read_limit (instance, limit_now, cap, in_flight, waiting,
                    arrivals_per_second, hold_seconds, bound, noted_at_ns)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (instance) DO UPDATE
             SET limit_now = excluded.limit_now, cap = excluded.cap,
                 in_flight = excluded.in_flight, waiting = excluded.waiting,
                 arrivals_per_second = excluded.arrivals_per_second,
                 hold_seconds = excluded.hold_seconds, bound = excluded.bound,
                 noted_at_ns = excluded.noted_at_ns",
            &[
                &self.me.id,
                &n.limit,
                &n.cap,
                &n.in_flight,
                &n.waiting,
                &n.arrivals_per_second,
                &n.hold_seconds,
                &n.bound,
                &to_nanos(n.noted_at),
            ],
        )
        .await
        .map(drop)
    }

    /// The rows of the instances still in `instance`; none on a database an
    /// older build set up (read only if the table is there).
    pub async fn read_limits(&self) -> Result<Vec<ReadLimitNote>, StoreError> {
        const CONTEXT: &str = "reading the read limits";
        let exists = self
            .query(CONTEXT, "SELECT to_regclass('read_limit') IS NOT NULL", &[])
            .await?;
        if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                CONTEXT,
                "SELECT r.instance, r.limit_now, r.cap, r.in_flight, r.waiting,
                        r.arrivals_per_second, r.hold_seconds, r.bound, r.noted_at_ns
                 FROM read_limit r JOIN instance i ON i.id = r.instance
                 ORDER BY i.started_at, i.id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ReadLimitNote {
                instance: Some(r.get(0)),
                limit: r.get(1),
                cap: r.get(2),
                in_flight: r.get(3),
                waiting: r.get(4),
                arrivals_per_second: r.get(5),
                hold_seconds: r.get(6),
                bound: r.get(7),
                noted_at: from_nanos(r.get(8)),
            })
            .collect())
    }

    pub async fn states(&self) -> Result<Vec<SubscriptionState>, StoreError> {
        let rows = self
            .query(
                "reading subscription states",
                "SELECT s.id, cu.watermark_ns, cu.pruned_before_ns, cu.last_poll_at_ns, cu.last_result,
                        (SELECT count(*) FROM outbox o WHERE o.subscription_id = s.id),
                        (SELECT count(*) FROM dead_letter d WHERE d.subscription_id = s.id),
                        de.state, de.detail, de.checked_at_ns,
                        l.holder, (extract(epoch FROM l.expires_at) * 1000000)::bigint
                 FROM (SELECT subscription_id AS id FROM cursor
                       UNION SELECT subscription_id FROM outbox
                       UNION SELECT subscription_id FROM dead_letter
                       UNION SELECT subscription_id FROM detection
                       UNION SELECT subscription_id FROM lease) s
                 LEFT JOIN cursor cu ON cu.subscription_id = s.id
                 LEFT JOIN detection de ON de.subscription_id = s.id
                 LEFT JOIN lease l ON l.subscription_id = s.id
                 ORDER BY s.id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let wm: Option<i64> = r.get(1);
                let pb: Option<i64> = r.get(2);
                let detection = match (
                    r.get::<_, Option<String>>(7),
                    r.get::<_, Option<String>>(8),
                    r.get::<_, Option<i64>>(9),
                ) {
                    (Some(state), Some(detail), Some(at)) => Some(DetectionNote {
                        state,
                        detail,
                        checked_at: from_nanos(at),
                    }),
                    _ => None,
                };
                let lease = match (r.get::<_, Option<String>>(10), r.get::<_, Option<i64>>(11)) {
                    (Some(holder), Some(us)) => Some(LeaseNote {
                        holder,
                        expires_at: micros_to_ts(us),
                    }),
                    _ => None,
                };
                SubscriptionState {
                    subscription_id: r.get(0),
                    cursor: wm.zip(pb).map(|(w, p)| Cursor {
                        watermark: from_nanos(w),
                        pruned_before: from_nanos(p),
                    }),
                    last_poll_at: r.get::<_, Option<i64>>(3).map(from_nanos),
                    last_result: r.get(4),
                    outbox: r.get(5),
                    dead_letters: r.get(6),
                    detection,
                    lease,
                }
            })
            .collect())
    }
}

/// Dead-letters the malformed entries not quarantined before; returns how many.
async fn quarantine(
    tx: &deadpool_postgres::Transaction<'_>,
    subscription_id: &str,
    malformed: &[(Malformed, Timestamp)],
) -> Result<usize, StoreError> {
    let mut quarantined = 0;
    for (m, seen_at) in malformed {
        // Keyed by content and remembered like an id, so that the next
        // query of the same window does not quarantine it again.
        let fresh = tx
            .execute(
                "INSERT INTO seen (subscription_id, event_data_id, event_ts_ns) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&subscription_id, &m.key, &to_nanos(*seen_at)],
            )
            .await
            .ctx("recording a seen id")?;
        if fresh == 0 {
            continue;
        }
        tx.execute(
            "INSERT INTO dead_letter (subscription_id, event_data_id, event_ts_ns, entry, reason, failed_at_ns)
             VALUES ($1, $2, NULL, $3, $4, $5)",
            &[&subscription_id, &m.key, &m.raw.get(), &m.reason, &to_nanos(chrono::Utc::now())],
        )
        .await
        .ctx("quarantining an entry")?;
        quarantined += 1;
    }
    Ok(quarantined)
}
