//! The durable store: embedded SQLite in WAL mode for alerts, incidents, acknowledgements
//! and the webhook outbox.
//!
//! An alert is handed to any other sink (stdout, SSE, webhooks) only after the
//! transaction that stored it — and queued its webhooks — committed, so whatever was
//! reported as stored survives a `kill -9` (WAL with `synchronous = NORMAL` loses
//! nothing on a process crash; only a power cut may drop the last transactions).
//! Schema changes are numbered migrations recorded in `user_version`.

use crate::correlate::exceptions::Exception;
use crate::model::{Alert, Disposition, Incident, Role, Severity, Ts};
use crate::time::serde_duration;
use rusqlite::{config::DbConfig, params, Connection, OptionalExtension};
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use thiserror::Error;

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file (relative to the config); none: no store.
    pub path: Option<PathBuf>,
    /// Closed alerts and incidents older than this (event time) are deleted. Default `"30d"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub retention: i64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention: 30 * 86_400_000,
        }
    }
}

/// Why the store failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite.
    #[error("store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A stored document that does not parse (a damaged database).
    #[error("store: damaged row: {0}")]
    Damaged(String),
    /// The file was written by a newer wattchdog, whose schema this one does not know.
    #[error("store {path}: schema version {found} is newer than this wattchdog's {known}: run the newer wattchdog, or restore the backup taken before the upgrade")]
    Newer {
        /// The database file.
        path: String,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: usize,
    },
    /// The blocking task that held the store did not finish (the runtime is stopping).
    #[error("store: the task working on it stopped: {0}")]
    Stopped(String),
}

/// The store as the pipeline, the HTTP API and the webhook worker share it.
pub type Shared = Arc<Mutex<Store>>;

/// Runs `f` on the shared store on tokio's blocking pool: SQLite's file I/O, and the
/// wait while another holder writes, must not stall an async worker that serves HTTP
/// requests or delivers webhooks.
pub async fn blocking<T: Send + 'static>(
    store: &Shared,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        f(&mut store.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await
    .map_err(|e| match e.try_into_panic() {
        // A bug, not a store failure: let it surface as the panic it was.
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(e) => StoreError::Stopped(e.to_string()),
    })?
}

const MIGRATIONS: [&str; 5] = [
    r#"
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    detector TEXT NOT NULL,
    severity INTEGER NOT NULL,
    technique TEXT NOT NULL,
    ts INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    status TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    body TEXT NOT NULL,
    stored_at INTEGER NOT NULL,
    acked_at INTEGER,
    acked_by TEXT
);
CREATE INDEX alerts_ts ON alerts (ts);
CREATE INDEX alerts_site_device ON alerts (site, device);
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX incidents_start ON incidents (start);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    delivered_at INTEGER,
    dead_at INTEGER
);
CREATE INDEX outbox_due ON outbox (delivered_at, dead_at, next_at);
"#,
    // Each snapshot of an alert is its own delivery (rows from before: the alert id).
    "ALTER TABLE outbox ADD COLUMN delivery_id TEXT;",
    // Every acknowledgement kept, with its note (the alert's columns keep the first).
    r#"
CREATE TABLE acks (
    alert_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    by TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX acks_alert ON acks (alert_id);
INSERT INTO acks (alert_id, at, by) SELECT id, acked_at, COALESCE(acked_by, '') FROM alerts WHERE acked_at IS NOT NULL;
"#,
    // An alert's part in its incident (rows from before roles: each its own cause).
    r#"
ALTER TABLE alerts ADD COLUMN role TEXT NOT NULL DEFAULT 'cause';
CREATE INDEX outbox_alert ON outbox (alert_id, receiver);
"#,
    // Dispositions, and the exceptions `expected` ones teach (revoked ones kept).
    r#"
ALTER TABLE acks ADD COLUMN disposition TEXT NOT NULL DEFAULT 'true_positive';
CREATE TABLE exceptions (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_by TEXT
);
"#,
];

/// Acknowledgements kept per alert; the next is refused.
pub const MAX_ACKS: i64 = 50;

/// Filters of an alert listing.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Only this site.
    pub site: Option<String>,
    /// Only this device.
    pub device: Option<String>,
    /// At least this severity.
    pub min_severity: Option<Severity>,
    /// Only alerts in this role (`?role=cause`: what started each incident).
    pub role: Option<Role>,
    /// Event time at or after.
    pub since: Option<Ts>,
    /// Event time before.
    pub until: Option<Ts>,
    /// Page size (at most 1,000).
    pub limit: usize,
    /// Rows to skip.
    pub offset: usize,
}

/// A queued webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxItem {
    /// Queue position.
    pub seq: i64,
    /// Receiver name.
    pub receiver: String,
    /// The alert.
    pub alert_id: String,
    /// The snapshot ([`crate::model::Alert::snapshot_id`]): the idempotency key.
    pub delivery_id: String,
    /// The body to send.
    pub body: String,
    /// When it was queued (wall ms).
    pub created_at: i64,
    /// Attempts so far.
    pub attempts: i64,
    /// The latest failure.
    pub last_error: Option<String>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acked {
    /// The alert's first acknowledgement.
    Now,
    /// Added to the history; the first, by `by` at `at` (wall ms), stands as the alert's.
    Added {
        /// When the first was.
        at: i64,
        /// Who gave the first.
        by: String,
    },
    /// The alert already has [`MAX_ACKS`]: not kept.
    Full,
    /// No such alert.
    Missing,
    /// `expected`, but the alert is not something an exception can describe: not kept.
    CannotTeach(String),
}

/// The database.
pub struct Store {
    conn: Connection,
    path: String,
}

fn severity_rank(s: Severity) -> i64 {
    s as i64
}

/// Names the store in a SQLite error without borrowing it (for use inside a transaction).
fn sqlite_error(path: String) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: name.clone(),
            source,
        })?;
        let store = Self { conn, path: name };
        store.init()?;
        Ok(store)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Sqlite {
            path: ":memory:".into(),
            source,
        })?;
        let store = Self {
            conn,
            path: ":memory:".into(),
        };
        store.init()?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn init(&self) -> Result<(), StoreError> {
        let e = self.err();
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(&e)?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(&e)?;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&e)?;
        // Plans that do not depend on bound values: otherwise this SQLite (built with
        // STAT4) marks a statement with `ORDER BY … LIMIT` for a new plan at every
        // binding, and the outbox poll prepared its query anew several times a second.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(&e)?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&e)?;
        if version > MIGRATIONS.len() as i64 {
            // Its tables may mean something else now: writing to them could damage it.
            return Err(StoreError::Newer {
                path: self.path.clone(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            self.conn.execute_batch(sql).map_err(&e)?;
            self.conn
                .pragma_update(None, "user_version", i as i64 + 1)
                .map_err(&e)?;
        }
        Ok(())
    }

    /// Stores an alert snapshot (keeping its acknowledgement) and queues it for each of
    /// `receivers`, in one transaction.
    pub fn put_alert(&mut self, a: &Alert, receivers: &[&str]) -> Result<(), StoreError> {
        let body = serde_json::to_string(a).map_err(|e| StoreError::Damaged(e.to_string()))?;
        let e = sqlite_error(self.path.clone());
        let tx = self.conn.transaction().map_err(&e)?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO alerts (id, site, device, kind, detector, severity, technique, ts, last_seen, status, incident_id, body, stored_at, role)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (id) DO UPDATE SET severity = excluded.severity, last_seen = excluded.last_seen,
               status = excluded.status, incident_id = excluded.incident_id, body = excluded.body,
               stored_at = excluded.stored_at, role = excluded.role",
            params![
                a.id,
                a.site,
                a.device,
                a.kind,
                a.detector,
                severity_rank(a.severity),
                a.technique.id,
                a.ts,
                a.last_seen,
                format!("{:?}", a.status).to_lowercase(),
                a.incident_id,
                body,
                now,
                a.role.as_str()
            ],
        )
        .map_err(&e)?;
        for r in receivers {
            tx.execute(
                "INSERT INTO outbox (receiver, alert_id, delivery_id, body, created_at, next_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![r, a.id, a.snapshot_id(), body, now],
            )
            .map_err(&e)?;
        }
        tx.commit().map_err(&e)
    }

    /// Whether a snapshot of the alert was ever queued for the receiver.
    pub fn was_queued(&self, alert_id: &str, receiver: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM outbox WHERE alert_id = ?1 AND receiver = ?2 LIMIT 1")
            .and_then(|mut s| s.exists(params![alert_id, receiver]))
            .map_err(self.err())
    }

    /// Stores an incident snapshot.
    pub fn put_incident(&mut self, i: &Incident) -> Result<(), StoreError> {
        let body = serde_json::to_string(i).map_err(|e| StoreError::Damaged(e.to_string()))?;
        self.conn
            .execute(
                "INSERT INTO incidents (id, site, start, end, severity, status, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET end = excluded.end, severity = excluded.severity,
                   status = excluded.status, body = excluded.body",
                params![
                    i.id,
                    i.site,
                    i.start,
                    i.end,
                    severity_rank(i.severity),
                    format!("{:?}", i.status).to_lowercase(),
                    body
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Alerts, newest first, with their first acknowledgement under `ack` (and every one
    /// under `ack.history`).
    pub fn alerts(&self, q: &AlertQuery) -> Result<Vec<Value>, StoreError> {
        let mut sql = String::from("SELECT body, acked_at, acked_by FROM alerts WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(s) = &q.site {
            args.push(s.clone().into());
            sql += &format!(" AND site = ?{}", args.len());
        }
        if let Some(d) = &q.device {
            args.push(d.clone().into());
            sql += &format!(" AND device = ?{}", args.len());
        }
        if let Some(s) = q.min_severity {
            args.push(severity_rank(s).into());
            sql += &format!(" AND severity >= ?{}", args.len());
        }
        if let Some(r) = q.role {
            args.push(r.as_str().to_owned().into());
            sql += &format!(" AND role = ?{}", args.len());
        }
        if let Some(t) = q.since {
            args.push(t.into());
            sql += &format!(" AND ts >= ?{}", args.len());
        }
        if let Some(t) = q.until {
            args.push(t.into());
            sql += &format!(" AND ts < ?{}", args.len());
        }
        sql += &format!(
            " ORDER BY ts DESC, id LIMIT {} OFFSET {}",
            q.limit.clamp(1, 1000),
            q.offset
        );
        self.stamped(&sql, rusqlite::params_from_iter(args), |v, at, by| {
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            let history = self.ack_history(&id)?;
            Ok((
                "ack",
                serde_json::json!({"at": crate::time::format_ts(at), "by": by, "history": history}),
            ))
        })
    }

    /// Documents of `sql`'s rows `(body, at, by)`; where `at` is set, `stamp` names and
    /// builds the field to add (an acknowledgement, a revocation).
    fn stamped(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        stamp: impl Fn(&Value, i64, Option<String>) -> Result<(&'static str, Value), StoreError>,
    ) -> Result<Vec<Value>, StoreError> {
        let e = self.err();
        let mut stmt = self.conn.prepare_cached(sql).map_err(&e)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(&e)?;
        let mut out = Vec::new();
        for row in rows {
            let (body, at, by) = row.map_err(&e)?;
            let mut v: Value =
                serde_json::from_str(&body).map_err(|e| StoreError::Damaged(e.to_string()))?;
            if let Some(at) = at {
                let (key, field) = stamp(&v, at, by)?;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(key.into(), field);
                }
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Incidents, newest first.
    pub fn incidents(&self, limit: usize, offset: usize) -> Result<Vec<Value>, StoreError> {
        let e = self.err();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM incidents ORDER BY start DESC, id LIMIT ?1 OFFSET ?2")
            .map_err(&e)?;
        let rows = stmt
            .query_map(params![limit.clamp(1, 1000) as i64, offset as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(&e)?;
        rows.map(|b| {
            let b = b.map_err(&e)?;
            serde_json::from_str(&b).map_err(|e| StoreError::Damaged(e.to_string()))
        })
        .collect()
    }

    /// Adds an acknowledgement (who, now, a note) to an alert's history; the first also
    /// becomes the alert's `ack`.
    pub fn ack(
        &mut self,
        id: &str,
        by: &str,
        note: &str,
        disposition: Disposition,
    ) -> Result<(Acked, Option<Exception>), StoreError> {
        let e = sqlite_error(self.path.clone());
        let tx = self.conn.transaction().map_err(&e)?;
        let first = tx
            .query_row(
                "SELECT acked_at, acked_by, body FROM alerts WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(&e)?;
        let Some((first_at, first_by, body)) = first else {
            return Ok((Acked::Missing, None));
        };
        let now = now_ms();
        // `expected` teaches an exception, in the same transaction as the acknowledgement.
        let taught = if disposition == Disposition::Expected {
            let alert: Value =
                serde_json::from_str(&body).map_err(|e| StoreError::Damaged(e.to_string()))?;
            match Exception::from_alert(&alert, by, note, &crate::time::format_ts(now)) {
                Ok(x) => Some(x),
                Err(why) => return Ok((Acked::CannotTeach(why), None)),
            }
        } else {
            None
        };
        let kept: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM acks WHERE alert_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .map_err(&e)?;
        if kept >= MAX_ACKS {
            return Ok((Acked::Full, None));
        }
        tx.execute(
            "INSERT INTO acks (alert_id, at, by, note, disposition) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, now, by, note, disposition.as_str()],
        )
        .map_err(&e)?;
        if let Some(x) = &taught {
            let body = serde_json::to_string(x).map_err(|e| StoreError::Damaged(e.to_string()))?;
            tx.execute(
                "INSERT INTO exceptions (id, body, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body, created_at = excluded.created_at,
                   revoked_at = NULL, revoked_by = NULL",
                params![x.id, body, now],
            )
            .map_err(&e)?;
        }
        let acked = match first_at {
            Some(at) => Acked::Added {
                at,
                by: first_by.unwrap_or_default(),
            },
            None => {
                tx.execute(
                    "UPDATE alerts SET acked_at = ?2, acked_by = ?3 WHERE id = ?1",
                    params![id, now, by],
                )
                .map_err(&e)?;
                Acked::Now
            }
        };
        tx.commit().map_err(&e)?;
        Ok((acked, taught))
    }

    /// Exceptions taught, newest first; revoked ones too when `revoked`, with who and when.
    pub fn exceptions(&self, revoked: bool) -> Result<Vec<Value>, StoreError> {
        self.stamped(
            "SELECT body, revoked_at, revoked_by FROM exceptions
             WHERE ?1 OR revoked_at IS NULL ORDER BY created_at DESC, id",
            params![revoked],
            |_, at, by| {
                Ok((
                    "revoked",
                    serde_json::json!({"at": crate::time::format_ts(at), "by": by}),
                ))
            },
        )
    }

    /// The exceptions in force.
    pub fn active_exceptions(&self) -> Result<Vec<Exception>, StoreError> {
        self.exceptions(false)?
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| StoreError::Damaged(e.to_string())))
            .collect()
    }

    /// Revokes an exception (kept, with who and when); false if none is in force.
    pub fn revoke_exception(&mut self, id: &str, by: &str) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE exceptions SET revoked_at = ?2, revoked_by = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now_ms(), by],
            )
            .map(|n| n > 0)
            .map_err(self.err())
    }

    /// An alert's acknowledgements, oldest first.
    fn ack_history(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        let e = self.err();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at, by, note, disposition FROM acks WHERE alert_id = ?1 ORDER BY at, rowid",
            )
            .map_err(&e)?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(serde_json::json!({
                    "at": crate::time::format_ts(r.get::<_, i64>(0)?),
                    "by": r.get::<_, String>(1)?,
                    "note": r.get::<_, String>(2)?,
                    "disposition": r.get::<_, String>(3)?,
                }))
            })
            .map_err(&e)?;
        rows.collect::<Result<_, _>>().map_err(&e)
    }

    /// Number of alerts stored.
    pub fn alert_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM alerts", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(self.err())
    }

    /// One receiver's deliveries due at `now` (wall ms), oldest first. Per receiver, so
    /// one receiver's backlog (a SIEM down for a day) never holds up another's.
    pub fn due(
        &self,
        receiver: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.outbox(
            "WHERE receiver = ?3 AND delivered_at IS NULL AND dead_at IS NULL AND next_at <= ?1 ORDER BY seq LIMIT ?2",
            params![now, limit as i64, receiver],
        )
    }

    /// Records deliveries that left in one go (a syslog batch), in one transaction.
    pub fn delivered_all(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        let e = sqlite_error(self.path.clone());
        let tx = self.conn.transaction().map_err(&e)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE seq = ?1",
                )
                .map_err(&e)?;
            let now = now_ms();
            for seq in seqs {
                stmt.execute(params![seq, now]).map_err(&e)?;
            }
        }
        tx.commit().map_err(&e)
    }

    /// Gives up on a receiver's deliveries queued before `before` (wall ms) and on all but
    /// its newest `keep`: they become dead letters with `reason`. Returns how many.
    pub fn expire(
        &mut self,
        receiver: &str,
        before: i64,
        keep: usize,
        reason: &str,
    ) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET dead_at = ?4, last_error = ?5 WHERE receiver = ?1 AND delivered_at IS NULL AND dead_at IS NULL
                 AND (created_at < ?2 OR seq <= coalesce((SELECT seq FROM outbox WHERE receiver = ?1 AND delivered_at IS NULL
                      AND dead_at IS NULL ORDER BY seq DESC LIMIT 1 OFFSET ?3), -1))",
                params![receiver, before, keep as i64, now_ms(), reason],
            )
            .map_err(self.err())
    }

    /// Per receiver with anything unsent: deliveries waiting (not given up on) and dead
    /// letters.
    pub fn outbox_counts(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let e = self.err();
        let mut stmt = self
            .conn
            .prepare_cached(
                // Undelivered rows only (the due index): sent ones stay until retention.
                "SELECT receiver, sum(dead_at IS NULL), sum(dead_at IS NOT NULL)
                 FROM outbox WHERE delivered_at IS NULL GROUP BY receiver",
            )
            .map_err(&e)?;
        let rows = stmt
            .query_map([], |r| {
                let n = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok((r.get(0)?, n(1)?, n(2)?))
            })
            .map_err(&e)?;
        rows.collect::<Result<_, _>>().map_err(&e)
    }

    /// Deliveries given up on.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.outbox(
            "WHERE dead_at IS NOT NULL ORDER BY seq DESC LIMIT ?1",
            params![limit as i64],
        )
    }

    fn outbox(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let e = self.err();
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, receiver, alert_id, coalesce(delivery_id, alert_id), body, created_at, attempts, last_error FROM outbox {filter}"
            ))
            .map_err(&e)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(OutboxItem {
                    seq: r.get(0)?,
                    receiver: r.get(1)?,
                    alert_id: r.get(2)?,
                    delivery_id: r.get(3)?,
                    body: r.get(4)?,
                    created_at: r.get(5)?,
                    attempts: r.get(6)?,
                    last_error: r.get(7)?,
                })
            })
            .map_err(&e)?;
        rows.collect::<Result<_, _>>().map_err(&e)
    }

    /// Records a successful delivery.
    pub fn delivered(&mut self, seq: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE seq = ?1",
                params![seq, now_ms()],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Records a failed attempt: retry at `next_at`, or give up (`None`).
    pub fn failed(
        &mut self,
        seq: i64,
        error: &str,
        next_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let sql = match next_at {
            Some(_) => "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_at = ?3 WHERE seq = ?1",
            None => "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, dead_at = ?3 WHERE seq = ?1",
        };
        self.conn
            .execute(sql, params![seq, error, next_at.unwrap_or_else(now_ms)])
            .map(|_| ())
            .map_err(self.err())
    }

    /// Deletes closed alerts and incidents whose last activity is older than `before`
    /// (event time), and deliveries finished before it (wall time); returns rows deleted.
    pub fn prune(&mut self, before: Ts) -> Result<usize, StoreError> {
        let e = self.err();
        let mut n = self
            .conn
            .execute(
                "DELETE FROM alerts WHERE status = 'closed' AND last_seen < ?1",
                params![before],
            )
            .map_err(&e)?;
        // Their acknowledgements go with them.
        self.conn
            .execute(
                "DELETE FROM acks WHERE alert_id NOT IN (SELECT id FROM alerts)",
                [],
            )
            .map_err(&e)?;
        n += self
            .conn
            .execute(
                "DELETE FROM incidents WHERE status = 'closed' AND end < ?1",
                params![before],
            )
            .map_err(&e)?;
        n += self
            .conn
            .execute(
                "DELETE FROM outbox WHERE coalesce(delivered_at, dead_at) < ?1",
                params![before],
            )
            .map_err(&e)?;
        Ok(n)
    }

    /// The stored body of one alert.
    pub fn alert(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM alerts WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Damaged(e.to_string())))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AlertStatus;
    use crate::model::Disposition;

    fn alert(id: &str, ts: Ts, severity: Severity, status: AlertStatus) -> Alert {
        Alert::sample(id, ts, severity, status)
    }

    #[test]
    fn the_outbox_poll_reuses_its_prepared_query() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        for i in 0..3 {
            let a = alert(&format!("a{i}"), i, Severity::High, AlertStatus::Open);
            s.put_alert(&a, &["grid"]).unwrap();
        }
        for k in 0..5 {
            assert_eq!(s.due("grid", now_ms() + k, 64).unwrap().len(), 3);
        }
        let sql = "SELECT seq, receiver, alert_id, coalesce(delivery_id, alert_id), body, created_at, attempts, last_error FROM outbox WHERE receiver = ?3 AND delivered_at IS NULL AND dead_at IS NULL AND next_at <= ?1 ORDER BY seq LIMIT ?2";
        let cached = s.conn.prepare_cached(sql).unwrap();
        use rusqlite::StatementStatus::{RePrepare, Run};
        assert_eq!(cached.get_status(Run), 5, "the same cached statement ran");
        assert_eq!(
            cached.get_status(RePrepare),
            0,
            "and was never planned again"
        );
    }

    #[test]
    fn alerts_upsert_filter_page_and_keep_their_ack() {
        let mut s = Store::in_memory().unwrap();
        for i in 0..5 {
            let sev = if i % 2 == 0 {
                Severity::High
            } else {
                Severity::Low
            };
            s.put_alert(
                &alert(&format!("a{i}"), i * 1000, sev, AlertStatus::Open),
                &[],
            )
            .unwrap();
        }
        assert_eq!(
            s.ack("a4", "ops", "", Disposition::TruePositive).unwrap().0,
            Acked::Now
        );
        assert_eq!(
            s.ack("nope", "ops", "", Disposition::TruePositive)
                .unwrap()
                .0,
            Acked::Missing
        );
        // The first acknowledgement stands: a second joins the history, overwriting
        // neither who nor when.
        assert!(matches!(
            s.ack("a4", "mallory", "escalated", Disposition::TruePositive).unwrap().0,
            Acked::Added { by, .. } if by == "ops"
        ));
        // A later snapshot of the same alert updates it and keeps the ack.
        s.put_alert(
            &alert("a4", 4000, Severity::Critical, AlertStatus::Closed),
            &[],
        )
        .unwrap();
        assert_eq!(s.alert_count().unwrap(), 5);
        let q = |min: Option<Severity>, limit, offset| AlertQuery {
            min_severity: min,
            limit,
            offset,
            ..AlertQuery::default()
        };
        let all = s.alerts(&q(None, 100, 0)).unwrap();
        assert_eq!(all[0]["id"], "a4", "newest first");
        assert_eq!(all[0]["severity"], "critical");
        assert_eq!(all[0]["ack"]["by"], "ops");
        let history = all[0]["ack"]["history"].as_array().unwrap();
        assert_eq!(
            history
                .iter()
                .map(|h| (h["by"].as_str(), h["note"].as_str()))
                .collect::<Vec<_>>(),
            [
                (Some("ops"), Some("")),
                (Some("mallory"), Some("escalated"))
            ]
        );
        for i in 2..MAX_ACKS {
            assert!(matches!(
                s.ack("a4", &format!("analyst-{i}"), "", Disposition::TruePositive)
                    .unwrap()
                    .0,
                Acked::Added { .. }
            ));
        }
        assert_eq!(
            s.ack("a4", "one-too-many", "", Disposition::TruePositive)
                .unwrap()
                .0,
            Acked::Full,
            "the history is bounded"
        );
        assert_eq!(s.alerts(&q(Some(Severity::High), 100, 0)).unwrap().len(), 3);
        let page = s.alerts(&q(None, 2, 2)).unwrap();
        assert_eq!((page.len(), page[0]["id"].as_str()), (2, Some("a2")));
        let window = AlertQuery {
            since: Some(1000),
            until: Some(3000),
            limit: 10,
            ..AlertQuery::default()
        };
        assert_eq!(s.alerts(&window).unwrap().len(), 2);
    }

    #[test]
    fn an_expected_command_is_taught_revoked_and_kept() {
        let mut s = Store::in_memory().unwrap();
        let write = Alert {
            detector: "protocol",
            evidence: serde_json::json!({"client": "10.20.0.5", "function": 6, "address": 1201}),
            ..alert("w", 0, Severity::High, AlertStatus::Open)
        };
        s.put_alert(&write, &[]).unwrap();
        s.put_alert(&alert("drift", 0, Severity::Low, AlertStatus::Open), &[])
            .unwrap();
        let (acked, taught) = s
            .ack("w", "alice", "BMS rewrite", Disposition::Expected)
            .unwrap();
        assert_eq!(acked, Acked::Now);
        let x = taught.unwrap();
        let w = x.write.as_ref().unwrap();
        assert_eq!(
            (w.client.as_str(), w.addresses.as_slice(), x.by.as_str()),
            ("10.20.0.5", &[1201][..], "alice")
        );
        assert_eq!(s.active_exceptions().unwrap(), std::slice::from_ref(&x));
        // A drift that says no level cannot be taught, and such an acknowledgement is not kept.
        let (acked, taught) = s.ack("drift", "alice", "", Disposition::Expected).unwrap();
        assert!(matches!(acked, Acked::CannotTeach(_)) && taught.is_none());
        let listed = s
            .alerts(&AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .unwrap();
        let w = listed.iter().find(|a| a["id"] == "w").unwrap();
        assert_eq!(w["ack"]["history"][0]["disposition"], "expected");
        assert!(listed
            .iter()
            .find(|a| a["id"] == "drift")
            .unwrap()
            .get("ack")
            .is_none());
        assert!(s.revoke_exception(&x.id, "bob").unwrap());
        assert!(
            !s.revoke_exception(&x.id, "bob").unwrap(),
            "already revoked"
        );
        assert!(s.active_exceptions().unwrap().is_empty());
        let all = s.exceptions(true).unwrap();
        assert_eq!(all[0]["revoked"]["by"], "bob", "kept, with who revoked it");
    }

    #[test]
    fn alerts_are_listed_by_role() {
        let mut s = Store::in_memory().unwrap();
        for (id, role) in [
            ("c", Role::Cause),
            ("e", Role::Consequence),
            ("r", Role::Recovery),
        ] {
            let a = Alert {
                role,
                ..alert(id, 0, Severity::Low, AlertStatus::Open)
            };
            s.put_alert(&a, &[]).unwrap();
        }
        // A later snapshot can change an alert's role.
        let demoted = Alert {
            role: Role::Consequence,
            ..alert("c", 0, Severity::Low, AlertStatus::Open)
        };
        s.put_alert(&alert("c2", 0, Severity::Low, AlertStatus::Open), &[])
            .unwrap();
        s.put_alert(&demoted, &[]).unwrap();
        let ids = |role| {
            let q = AlertQuery {
                role: Some(role),
                limit: 10,
                ..AlertQuery::default()
            };
            let mut v: Vec<String> = s
                .alerts(&q)
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(Role::Cause), ["c2"]);
        assert_eq!(ids(Role::Consequence), ["c", "e"]);
        assert_eq!(ids(Role::Recovery), ["r"]);
    }

    #[test]
    fn the_outbox_retries_and_gives_up() {
        let mut s = Store::in_memory().unwrap();
        s.put_alert(
            &alert("a1", 0, Severity::High, AlertStatus::Open),
            &["grid", "soc"],
        )
        .unwrap();
        // Each receiver has its own queue: one that fails does not hold up the other.
        let grid = s.due("grid", i64::MAX, 10).unwrap();
        let soc = s.due("soc", i64::MAX, 10).unwrap();
        assert_eq!((grid.len(), soc.len()), (1, 1));
        s.delivered(grid[0].seq).unwrap();
        s.failed(soc[0].seq, "HTTP 503", Some(i64::MAX - 1))
            .unwrap();
        assert!(
            s.due("soc", now_ms(), 10).unwrap().is_empty(),
            "retry not due yet"
        );
        assert!(s.due("grid", i64::MAX, 10).unwrap().is_empty(), "delivered");
        let again = s.due("soc", i64::MAX, 10).unwrap();
        assert_eq!((again.len(), again[0].attempts), (1, 1));
        s.failed(again[0].seq, "HTTP 503", None).unwrap();
        assert!(s.due("soc", i64::MAX, 10).unwrap().is_empty());
        let dead = s.dead_letters(10).unwrap();
        assert_eq!(
            (dead[0].receiver.as_str(), dead[0].last_error.as_deref()),
            ("soc", Some("HTTP 503"))
        );
    }

    #[test]
    fn a_queue_is_bounded_by_age_and_length() {
        let mut s = Store::in_memory().unwrap();
        for i in 0..5 {
            s.put_alert(
                &alert(&format!("a{i}"), i, Severity::High, AlertStatus::Open),
                &["siem", "grid"],
            )
            .unwrap();
        }
        assert_eq!(
            s.outbox_counts().unwrap(),
            [("grid".into(), 5, 0), ("siem".into(), 5, 0)]
        );
        // Keep the newest 2 of siem's; grid's queue is untouched.
        assert_eq!(s.expire("siem", i64::MIN, 2, "full").unwrap(), 3);
        let left: Vec<String> = s
            .due("siem", i64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.alert_id)
            .collect();
        assert_eq!(left, ["a3", "a4"]);
        assert_eq!(s.due("grid", i64::MAX, 10).unwrap().len(), 5);
        // Older than the bound: all of them.
        assert_eq!(s.expire("siem", i64::MAX, 100, "old").unwrap(), 2);
        assert_eq!(s.dead_letters(10).unwrap().len(), 5);
        assert_eq!(s.outbox_counts().unwrap()[1], ("siem".into(), 0, 5));
        let seqs: Vec<i64> = s
            .due("grid", i64::MAX, 10)
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect();
        s.delivered_all(&seqs).unwrap();
        assert!(s.due("grid", i64::MAX, 10).unwrap().is_empty());
    }

    /// The idempotency keys of everything due, oldest first.
    fn delivery_ids(s: &Store) -> Vec<String> {
        s.due("grid", i64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.delivery_id)
            .collect()
    }

    #[test]
    fn each_snapshot_of_an_alert_is_its_own_delivery() {
        let mut s = Store::in_memory().unwrap();
        let opened = alert("a1", 0, Severity::Medium, AlertStatus::Open);
        let mut escalated = opened.clone();
        (escalated.severity, escalated.findings) = (Severity::Critical, 7);
        let mut closed = escalated.clone();
        closed.status = AlertStatus::Closed;
        for a in [&opened, &escalated, &closed, &closed] {
            s.put_alert(a, &["grid"]).unwrap();
        }
        let keys = delivery_ids(&s);
        assert_eq!(keys.len(), 4);
        assert!(keys.iter().all(|k| k.starts_with("a1:")));
        assert_eq!(keys[2], keys[3], "the same snapshot again: the same key");
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 3, "{keys:?}");
    }

    #[test]
    fn a_store_from_a_newer_wattchdog_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("next.db");
        Store::open(&path).unwrap();
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        drop(c);
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("newer"), "{err}");
    }

    #[test]
    fn a_database_of_the_first_schema_is_migrated_and_its_queue_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO outbox (receiver, alert_id, body, created_at, next_at) VALUES ('grid', 'old', '{}', 0, 0)",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO alerts (id, site, device, kind, detector, severity, technique, ts, last_seen, status, incident_id, body, stored_at, acked_at, acked_by)
                 VALUES ('acked', 's', 'd', 'ups', 'limits', 2, 'T0831', 5, 5, 'open', 'i', '{\"id\":\"acked\"}', 0, 7000, 'ops')",
                [],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        s.put_alert(
            &alert("new", 0, Severity::Low, AlertStatus::Open),
            &["grid"],
        )
        .unwrap();
        let keys = delivery_ids(&s);
        assert_eq!(keys, ["old", "new:open:1:low:cause"]);
        // An acknowledgement from before the history is its first entry.
        let listed = s
            .alerts(&AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .unwrap();
        let acked = listed.iter().find(|a| a["id"] == "acked").unwrap();
        assert_eq!(acked["ack"]["history"][0]["by"], "ops");
    }

    #[test]
    fn a_reopened_file_keeps_everything_and_retention_prunes_closed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.put_alert(&alert("old", 0, Severity::Low, AlertStatus::Closed), &[])
                .unwrap();
            s.put_alert(&alert("open", 0, Severity::Low, AlertStatus::Open), &[])
                .unwrap();
            s.ack("old", "ops", "", Disposition::TruePositive).unwrap();
            s.ack("open", "ops", "", Disposition::TruePositive).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.alert_count().unwrap(), 2);
        assert_eq!(s.prune(1000).unwrap(), 1);
        assert!(s.alert("old").unwrap().is_none());
        assert!(s.alert("open").unwrap().is_some());
        let acks: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM acks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(acks, 1, "a pruned alert's acknowledgements go with it");
    }
}
