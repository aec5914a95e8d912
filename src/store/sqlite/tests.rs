//! Unit tests of the sqlite backend.
use super::*;
use crate::event::parse_timestamp;
use serde_json::json;

fn entry(id: &str, ts: &str) -> Entry {
    Entry {
        event_data_id: id.into(),
        event_timestamp: parse_timestamp(ts).unwrap(),
        status: Some("Succeeded".into()),
        trail: Default::default(),
        raw: serde_json::value::to_raw_value(&json!({"eventDataId": id})).unwrap(),
    }
}

#[test]
fn an_entry_is_queued_once_and_pruned_after_the_lookback() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let t0 = parse_timestamp("2026-01-01T00:00:00Z").unwrap();
    store.init_cursor("sub", t0).unwrap();
    let a = entry("a", "2026-01-01T00:01:00Z");
    let r = store
        .record_page("sub", std::slice::from_ref(&a), &[], &[], None, true)
        .unwrap();
    assert_eq!((r.new, r.duplicate), (1, 0));
    let r = store
        .record_page("sub", std::slice::from_ref(&a), &[], &[], None, true)
        .unwrap();
    assert_eq!((r.new, r.duplicate), (0, 1));
    assert_eq!(store.outbox_depth().unwrap(), 1);
    // Prune past the entry: the cursor refuses queries before it from now on.
    let later = parse_timestamp("2026-01-01T00:02:00Z").unwrap();
    store
        .record_page(
            "sub",
            &[],
            &[],
            &[],
            Some(Advance {
                watermark: later,
                prune_before: later,
            }),
            true,
        )
        .unwrap();
    let c = store.cursor("sub").unwrap().unwrap();
    assert_eq!(c.pruned_before, later);
    assert_eq!(c.watermark, later);
    // The watermark never moves back.
    store
        .record_page(
            "sub",
            &[],
            &[],
            &[],
            Some(Advance {
                watermark: t0,
                prune_before: t0,
            }),
            true,
        )
        .unwrap();
    assert_eq!(store.cursor("sub").unwrap().unwrap().watermark, later);
}

#[test]
fn a_backlog_never_crowds_out_another_subscriptions_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let backlog: Vec<Entry> = (0..500)
        .map(|i| entry(&format!("old-{i:03}"), "2026-01-01T00:00:00Z"))
        .collect();
    store
        .record_page("backfill", &backlog, &[], &[], None, true)
        .unwrap();
    for (sub, id) in [("live-1", "l1"), ("live-2", "l2")] {
        store
            .record_page(
                sub,
                &[entry(id, "2026-01-02T00:00:00Z")],
                &[],
                &[],
                None,
                true,
            )
            .unwrap();
    }
    let batch = store.next_batch(8, &[], None).unwrap();
    let ids: Vec<_> = batch.iter().map(|e| e.event_data_id.as_str()).collect();
    // Both live events in the first batch, interleaved with the backlog,
    // which takes what they leave.
    assert_eq!(ids.len(), 8);
    assert_eq!(&ids[..3], ["old-000", "l1", "l2"]);
    assert!(ids[3..].iter().all(|i| i.starts_with("old-")));
    // Rotation: after "backfill", "live-1" comes first.
    let batch = store.next_batch(3, &[], Some("backfill")).unwrap();
    let subs: Vec<_> = batch.iter().map(|e| e.subscription_id.as_str()).collect();
    assert_eq!(subs, ["live-1", "live-2", "backfill"]);
    // In-flight events are skipped.
    let flying: Vec<i64> = batch.iter().map(|e| e.seq).collect();
    let next = store.next_batch(3, &flying, None).unwrap();
    assert!(next.iter().all(|e| !flying.contains(&e.seq)));
    assert_eq!(next.len(), 3);
}

#[test]
fn not_a_database_and_newer_schema_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    assert!(matches!(
        SqliteStore::open(&junk),
        Err(StoreError::NotADatabase { .. })
    ));
    // The file is left as it was.
    assert_eq!(std::fs::read(&junk).unwrap(), vec![b'x'; 4096]);

    let newer = dir.path().join("newer.db");
    {
        let c = Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = SqliteStore::open(&newer).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1));
}

#[test]
fn open_existing_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A database the poller never ran with is refused, and stays empty.
    let empty = dir.path().join("empty.db");
    Connection::open(&empty).unwrap();
    assert!(matches!(
        SqliteStore::open_existing(&empty),
        Err(StoreError::NoSchema { .. })
    ));
    let c = Connection::open(&empty).unwrap();
    let tables: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0);
    drop(c);

    // An older schema is read as it is, not migrated (a daemon of that
    // version may be running beside `status`).
    let older = dir.path().join("older.db");
    SqliteStore::open(&older).unwrap();
    {
        let c = Connection::open(&older).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION - 1)
            .unwrap();
    }
    let store = SqliteStore::open_existing(&older).unwrap();
    assert!(store.cursor("sub").unwrap().is_none());
    let c = Connection::open(&older).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION - 1);
}
#[test]
fn the_read_limit_is_one_row_and_unknown_on_an_older_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    // A state an older build wrote: no read_limit table. `status` reads
    // it as unknown and creates nothing.
    SqliteStore::open(&path).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE read_limit")
        .unwrap();
    let old = SqliteStore::open_existing(&path).unwrap();
    assert_eq!(old.read_limits().unwrap(), Vec::new());
    let tables: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'read_limit'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);

    let store = SqliteStore::open(&path).unwrap();
    let mut note = ReadLimitNote {
        instance: None,
        limit: 32,
        cap: 512,
        in_flight: 3,
        waiting: 0,
        arrivals_per_second: 1.5,
        hold_seconds: 0.25,
        bound: "demand".into(),
        noted_at: from_nanos(1_000),
    };
    store.note_read_limit(&note).unwrap();
    note.limit = 64;
    note.bound = "cap".into();
    store.note_read_limit(&note).unwrap();
    assert_eq!(old.read_limits().unwrap(), vec![note]);
}

#[test]
fn ack_and_reject_empty_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    store
        .record_page(
            "sub",
            &[
                entry("a", "2026-01-01T00:00:02Z"),
                entry("b", "2026-01-01T00:00:01Z"),
            ],
            &[],
            &[],
            None,
            true,
        )
        .unwrap();
    let batch = store.next_batch(10, &[], None).unwrap();
    // Oldest first, whatever order they were recorded in.
    let ids: Vec<_> = batch.iter().map(|e| e.event_data_id.as_str()).collect();
    assert_eq!(ids, ["b", "a"]);
    assert_eq!(
        store.next_batch(10, &[batch[0].seq], None).unwrap().len(),
        1
    );
    store.ack(batch[0].seq).unwrap();
    store.reject(batch[1].seq, "HTTP 400").unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 0);
    let dead = store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_data_id, "a");
    assert_eq!(dead[0].reason, "HTTP 400");
}

fn story_of(store: &SqliteStore, id: &str) -> crate::store::journal::Story {
    let q = crate::store::journal::TraceQuery {
        event: Some(id.into()),
        limit: 10,
        ..Default::default()
    };
    let mut found = store.trace(&q).unwrap();
    assert_eq!(found.len(), 1, "{id}: {found:?}");
    found.remove(0)
}

#[test]
fn the_journal_follows_each_event_to_its_fate_and_is_pruned_oldest_first() {
    use crate::store::journal::Fate;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let now = chrono::Utc::now();
    store.start_journal(true, now).unwrap();
    let mut skipped = entry("started", "2026-01-01T00:00:00Z");
    skipped.status = Some("Started".into());
    let page = [
        entry("ok", "2026-01-01T00:00:01Z"),
        entry("bad", "2026-01-01T00:00:02Z"),
    ];
    store
        .record_page(
            "sub",
            &page,
            std::slice::from_ref(&skipped),
            &[],
            None,
            true,
        )
        .unwrap();
    // The window's next query sees them all again: nothing changes.
    store
        .record_page(
            "sub",
            &page,
            std::slice::from_ref(&skipped),
            &[],
            None,
            true,
        )
        .unwrap();
    let batch = store.next_batch(10, &[], None).unwrap();
    let seq = |id: &str| batch.iter().find(|e| e.event_data_id == id).unwrap().seq;
    store
        .settle(&[], &[], &[(seq("ok"), "HTTP 503".into())], true)
        .unwrap();
    let waiting = story_of(&store, "ok");
    assert_eq!(waiting.fate, Fate::Queued);
    assert_eq!(waiting.waiting, Some((1, Some("HTTP 503".into()))));
    store
        .settle(
            &[(seq("ok"), 202)],
            &[(seq("bad"), "HTTP 400 Bad Request".into())],
            &[],
            true,
        )
        .unwrap();
    let ok = story_of(&store, "ok");
    assert_eq!(
        (ok.fate, ok.http_status, ok.attempts, ok.detail.as_deref()),
        (Fate::Delivered, Some(202), Some(2), Some("HTTP 503"))
    );
    let bad = story_of(&store, "bad");
    assert_eq!(
        (bad.fate, bad.detail.as_deref()),
        (Fate::DeadLettered, Some("HTTP 400 Bad Request"))
    );
    assert_eq!(story_of(&store, "started").fate, Fate::Skipped);
    // Re-queued from the dead letters, it is queued again.
    store.retry_dead_letters(None).unwrap();
    let again = story_of(&store, "bad");
    assert_eq!(
        (again.fate, again.settled_at, again.attempts),
        (Fate::Queued, None, Some(1))
    );
    // Delivered at last: the latest outcome is the story.
    let batch = store.next_batch(10, &[], None).unwrap();
    store
        .settle(&[(batch[0].seq, 200)], &[], &[], true)
        .unwrap();
    let bad = story_of(&store, "bad");
    assert_eq!(
        (bad.fate, bad.http_status, bad.attempts),
        (Fate::Delivered, Some(200), Some(1))
    );
    let outcomes = || {
        store
            .with(|c| {
                c.query_row("SELECT count(*) FROM journal_outcome", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ctx("counting")
            })
            .unwrap()
    };
    assert_eq!(
        outcomes(),
        4,
        "delivered, dead-lettered, queued again, delivered"
    );
    // Nothing was fetched before `now`; everything was before a later cutoff.
    assert_eq!(
        store
            .prune_journal(now - chrono::Duration::hours(1))
            .unwrap(),
        0
    );
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.prune_journal(later).unwrap(), 3);
    assert_eq!(outcomes(), 0, "pruned with their rows");
    let span = store.journal_span().unwrap().unwrap();
    assert_eq!(
        span.pruned_before,
        Some(crate::event::from_nanos(to_nanos(later)))
    );
    assert_eq!(span.holds_from(), span.pruned_before.unwrap());
}

#[test]
fn without_the_journal_nothing_is_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    store.start_journal(false, chrono::Utc::now()).unwrap();
    store
        .record_page(
            "sub",
            &[entry("a", "2026-01-01T00:00:01Z")],
            &[],
            &[],
            None,
            false,
        )
        .unwrap();
    let q = crate::store::journal::TraceQuery {
        limit: 10,
        ..Default::default()
    };
    assert!(store.trace(&q).unwrap().is_empty());
    assert!(store.journal_span().unwrap().unwrap().off_since.is_some());
}

/// Every call runs on the store's one thread, in turn; one that panics
/// drops only its own answer, and the thread takes the next.
#[test]
fn calls_run_on_the_store_thread_and_survive_a_panicking_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    assert!(store.submit(Box::new(|| panic!("a call that panics"))));
    let s = store.clone();
    assert!(store.submit(Box::new(move || {
        let name = std::thread::current().name().map(str::to_string);
        let cursor = s.init_cursor("sub", parse_timestamp("2026-01-01T00:00:00Z").unwrap());
        let _ = tx.send((name, cursor.is_ok()));
    })));
    let (name, ok) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the call after a panicking one ran");
    assert_eq!(name.as_deref(), Some("state-store"));
    assert!(ok);
}
