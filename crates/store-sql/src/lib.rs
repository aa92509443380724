//! The cloudvpp storage traits implemented once in SQL, for SQLite and PostgreSQL.
//!
//! Work is handed out with row leases (on PostgreSQL taken under `FOR UPDATE SKIP LOCKED`),
//! and the per-organisation counters are taken under the organisation's row lock (on SQLite,
//! under the one writer), so concurrent writers never share a change number and a sync
//! never skips a change.

mod engine;
mod mdm;
#[allow(dead_code)] // used as the row mappers move to it
mod row;

use async_trait::async_trait;
use cloudvpp_abwire::{MdmInfo, RequestUser, UserStatus};
use cloudvpp_store::logic::{self, EventProgress};
use cloudvpp_store::secret;
use cloudvpp_store::{
    AcceptOutcome, AppsBooksStore, ClientConfig, EventClaim, EventRecord, EventType,
    NewNotification, Org, OutboxItem, Result, StoreError, TokenRecord, UserFilter, UserOp,
    UserOutcome, UserRecord, UserWindow,
};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};

/// What differs between the SQL backends at run time. Everything else (queries with `$n`
/// placeholders, which SQLite accepts too, row mapping, the rules of an event step) is
/// shared, so a rule changes in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// One writer at a time per file; row locks do not exist.
    Sqlite,
    /// Many writers; rows are locked and leased.
    Postgres,
}

impl Dialect {
    /// How a write transaction starts. SQLite: `BEGIN IMMEDIATE`, because a transaction
    /// that reads before writing would otherwise fail with `SQLITE_BUSY_SNAPSHOT` when
    /// another process wrote in between, instead of waiting its turn.
    fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Appended to a read that a write in the same transaction depends on. SQLite's
    /// `BEGIN IMMEDIATE` already excludes every other writer.
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Appended to the choice of rows of `table` to lease: another instance skips rows
    /// being leased instead of waiting for them.
    fn skip_locked(self, table: &str) -> String {
        match self {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
        }
    }

    /// `col` is one of the values `sub` selects. On PostgreSQL as an array, so that the
    /// planner probes the primary key for each value instead of merging with a scan of it.
    fn in_subquery(self, col: &str, sub: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{col} IN ({sub})"),
            Dialect::Postgres => format!("{col} = ANY(ARRAY({sub}))"),
        }
    }

    /// The two-argument maximum: SQLite's scalar `MAX`, PostgreSQL's `GREATEST`.
    fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MAX",
            Dialect::Postgres => "GREATEST",
        }
    }

    /// The database clock, in whole seconds: one clock for every instance.
    fn unix_seconds(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER)",
            Dialect::Postgres => "CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)",
        }
    }
}

/// The store, over sqlx's `Any` driver. The backend crates (`cloudvpp-store-sqlite`,
/// `cloudvpp-store-postgres`) open the pools, tune the connections and run their own
/// migrations, then hand them here.
#[derive(Clone)]
pub struct SqlStore {
    pub(crate) writer: AnyPool,
    pub(crate) reader: AnyPool,
    pub(crate) dialect: Dialect,
}

/// A sqlx error as the services see it: a broken uniqueness rule is a conflict, a database
/// that cannot be reached is unavailable, a value that does not decode is corrupt; the
/// sqlx error stays attached as the source.
pub fn err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                return StoreError::Conflict(db.message().to_string());
            }
            if db.code().is_some_and(|c| unavailable_code(&c)) {
                return StoreError::Unavailable(e.into());
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => return StoreError::Unavailable(e.into()),
        sqlx::Error::ColumnDecode { .. } => return StoreError::corrupt("column", e),
        _ => {}
    }
    StoreError::Other(e.into())
}

/// Whether a database error code means "cannot be reached now" rather than "this statement
/// failed". PostgreSQL codes are 5-character SQLSTATEs; SQLite's are (extended) result codes
/// in decimal, never 5 characters long.
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        // 08: connection exception; 28: authentication; 53: out of connections, memory or
        // disk; 57P: shutting down, backend terminated, cannot connect now; 55000: the
        // database does not accept connections; 3D000: no such database; 42501: CONNECT
        // revoked (or a privilege taken away: the operator's problem, not the client's).
        ["08", "28", "53", "57P"]
            .iter()
            .any(|p| code.starts_with(p))
            || ["55000", "3D000", "42501"].contains(&code)
    } else {
        // SQLITE_BUSY, _LOCKED (after the busy timeout), _IOERR, _FULL, _CANTOPEN.
        code.parse::<u32>()
            .is_ok_and(|n| [5, 6, 10, 13, 14].contains(&(n & 0xff)))
    }
}

impl SqlStore {
    /// A store over migrated pools: `writer` takes every write transaction, `reader` the
    /// plain reads (they may be the same pool).
    pub fn new(writer: AnyPool, reader: AnyPool, dialect: Dialect) -> Self {
        SqlStore {
            writer,
            reader,
            dialect,
        }
    }

    /// The backend in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Replaces secrets stored in plaintext by an older version (sTokens, the engine's
    /// notification tokens) with their digest. Run at start-up, after the migrations; it
    /// is done here, not in SQL, because SQLite has no SHA-256. Idempotent, and safe with
    /// instances starting together: a row is only changed from the plaintext it was read as.
    pub async fn digest_stored_secrets(&self) -> Result<()> {
        for (table, column) in [("tokens", "stoken"), ("engine_locations", "notify_token")] {
            let rows = sqlx::query(&format!(
                "SELECT id, {column} FROM {table} WHERE {column} NOT LIKE '{}%'",
                secret::PREFIX
            ))
            .fetch_all(&self.writer)
            .await
            .map_err(err)?;
            for r in rows {
                let (id, plain): (i64, String) = (r.get(0), r.get(1));
                sqlx::query(&format!(
                    "UPDATE {table} SET {column} = $1 WHERE id = $2 AND {column} = $3"
                ))
                .bind(secret::digest(&plain))
                .bind(id)
                .bind(&plain)
                .execute(&self.writer)
                .await
                .map_err(err)?;
            }
        }
        Ok(())
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        self.writer
            .begin_with(self.dialect.begin())
            .await
            .map_err(err)
    }

    /// Locks the claimed event for a step and checks the claim still holds it at its
    /// cursor; returns the stored progress and the number of users requested.
    async fn lock_step(
        &self,
        tx: &mut AnyConnection,
        claim: &EventClaim,
    ) -> Result<(EventProgress, i64)> {
        let ev = sqlx::query(&format!(
            "SELECT lease_owner, status, progress, num_requested FROM events WHERE id = $1{}",
            self.dialect.for_update()
        ))
        .bind(claim.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let lease_owner: Option<String> = ev.get(0);
        let status: String = ev.get(1);
        if lease_owner.as_deref() != Some(claim.owner.as_str()) || status != "PENDING" {
            return Err(StoreError::LeaseLost);
        }
        let progress: EventProgress =
            serde_json::from_str(ev.get::<&str, _>(2)).unwrap_or_default();
        if progress.cursor != claim.cursor {
            return Err(StoreError::LeaseLost);
        }
        Ok((progress, ev.get(3)))
    }
}

/// The end of every step: folds the outcomes into the event's progress (and, at the end,
/// its final status), renews the lease, clears the step's failure count and queues the
/// `USER_MANAGEMENT` notifications, in the step's transaction.
#[allow(clippy::too_many_arguments)]
async fn finish_step(
    tx: &mut AnyConnection,
    claim: &EventClaim,
    org: &Org,
    progress: &mut EventProgress,
    total: i64,
    outcomes: &[UserOutcome],
    now: i64,
    lease_ms: i64,
) -> Result<()> {
    let notify = org
        .config
        .subscribed(cloudvpp_abwire::notification::types::USER_MANAGEMENT);
    let step = logic::fold_step(
        progress,
        outcomes,
        total as usize,
        notify,
        &org.uid,
        &claim.event_id,
        claim.event_type,
    );
    let status = step.final_status.unwrap_or("PENDING");
    sqlx::query(
        "UPDATE events SET progress = $1, num_completed = $2, status = $3, lease_until = $4, finished_at = $5, step_failures = 0 WHERE id = $6",
    )
    .bind(serde_json::to_string(&*progress).expect("serialisable"))
    .bind(progress.num_completed)
    .bind(status)
    .bind(now + lease_ms)
    .bind(step.final_status.map(|_| now))
    .bind(claim.id)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    if notify {
        for body in &step.notifications {
            insert_notification(
                tx,
                org.id,
                cloudvpp_abwire::notification::types::USER_MANAGEMENT,
                body,
                now,
            )
            .await?;
        }
    }
    Ok(())
}

const ORG_COLS: &str = "id, uid, name, secret, user_count, chg, mdm_info, notification_url, notification_auth_token, notification_types";
const USER_COLS: &str = "ord, chg, client_user_id, email, invite_code, id_hash, status";

fn org_from_row(r: &AnyRow) -> Org {
    let mdm_info: Option<String> = r.get(6);
    let types: String = r.get(9);
    Org {
        id: r.get(0),
        uid: r.get(1),
        name: r.get(2),
        secret: r.get(3),
        user_count: r.get(4),
        chg: r.get(5),
        config: ClientConfig {
            mdm_info: mdm_info.and_then(|s| serde_json::from_str::<MdmInfo>(&s).ok()),
            notification_url: r.get(7),
            notification_auth_token: r.get(8),
            notification_types: serde_json::from_str(&types).unwrap_or_default(),
        },
    }
}

fn user_from_row(r: &AnyRow) -> UserRecord {
    let status: String = r.get(6);
    UserRecord {
        ord: r.get(0),
        chg: r.get(1),
        client_user_id: r.get(2),
        email: r.get(3),
        invite_code: r.get(4),
        id_hash: r.get(5),
        status: UserStatus::parse(&status).unwrap_or(UserStatus::Registered),
    }
}

fn filter_sql(f: &UserFilter) -> &'static str {
    match (f.active_only, f.retired_only) {
        (true, false) => " AND status <> 'Retired'",
        (false, true) => " AND status = 'Retired'",
        (true, true) => " AND FALSE",
        (false, false) => "",
    }
}

async fn insert_notification(
    conn: &mut AnyConnection,
    org_id: i64,
    kind: &str,
    body: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox (org_id, notification_type, body, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(org_id)
    .bind(kind)
    .bind(body)
    .bind(now)
    .bind(now)
    .execute(conn)
    .await
    .map_err(err)?;
    Ok(())
}

async fn active_user(
    conn: &mut AnyConnection,
    org_id: i64,
    cuid: &str,
) -> Result<Option<(i64, UserRecord)>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLS}, id FROM users WHERE org_id = $1 AND client_user_id = $2 AND status <> 'Retired'"
    ))
    .bind(org_id)
    .bind(cuid)
    .fetch_optional(conn)
    .await
    .map_err(err)?;
    Ok(row.map(|r| (r.get(7), user_from_row(&r))))
}

async fn hash_in_use(
    conn: &mut AnyConnection,
    org_id: i64,
    id_hash: &str,
    except_id: i64,
) -> Result<bool> {
    let row = sqlx::query("SELECT id FROM users WHERE org_id = $1 AND id_hash = $2 AND status = 'Associated' AND id <> $3")
        .bind(org_id)
        .bind(id_hash)
        .bind(except_id)
        .fetch_optional(conn)
        .await
        .map_err(err)?;
    Ok(row.is_some())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl AppsBooksStore for SqlStore {
    async fn create_org(
        &self,
        uid: &str,
        name: &str,
        secret: &str,
        stoken: &str,
        expires_at: i64,
    ) -> Result<Org> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO orgs (uid, name, secret, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(uid)
        .bind(name)
        .bind(secret)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?
        .get(0);
        sqlx::query(
            "INSERT INTO tokens (org_id, stoken, expires_at_secs, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(secret::digest(stoken))
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.get_org(id)
            .await?
            .ok_or_else(|| StoreError::other("organisation vanished"))
    }

    async fn list_orgs(&self) -> Result<Vec<Org>> {
        let rows = sqlx::query(&format!("SELECT {ORG_COLS} FROM orgs ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(org_from_row).collect())
    }

    async fn get_org(&self, org_id: i64) -> Result<Option<Org>> {
        let row = sqlx::query(&format!("SELECT {ORG_COLS} FROM orgs WHERE id = $1"))
            .bind(org_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(org_from_row))
    }

    async fn find_org(&self, uid_or_name: &str) -> Result<Option<Org>> {
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLS} FROM orgs WHERE uid = $1 OR name = $2 ORDER BY id LIMIT 1"
        ))
        .bind(uid_or_name)
        .bind(uid_or_name)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.as_ref().map(org_from_row))
    }

    async fn renew_token(&self, org_id: i64, stoken: &str, expires_at: i64) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE org_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(
            "INSERT INTO tokens (org_id, stoken, expires_at_secs, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(org_id)
        .bind(secret::digest(stoken))
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn find_token(&self, stoken: &str) -> Result<Option<TokenRecord>> {
        let row =
            sqlx::query("SELECT org_id, expires_at_secs, revoked_at FROM tokens WHERE stoken = $1")
                .bind(secret::digest(stoken))
                .fetch_optional(&self.reader)
                .await
                .map_err(err)?;
        Ok(row.map(|r| TokenRecord {
            org_id: r.get(0),
            expires_at: r.get(1),
            revoked: r.get::<Option<i64>, _>(2).is_some(),
        }))
    }

    async fn current_token_expiry(&self, org_id: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT expires_at_secs FROM tokens WHERE org_id = $1 AND revoked_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(org_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_client_config(&self, org_id: i64, config: &ClientConfig) -> Result<()> {
        let mdm = config
            .mdm_info
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("serialisable"));
        sqlx::query(
            "UPDATE orgs SET mdm_info = $1, notification_url = $2, notification_auth_token = $3, notification_types = $4 WHERE id = $5",
        )
        .bind(mdm)
        .bind(&config.notification_url)
        .bind(&config.notification_auth_token)
        .bind(serde_json::to_string(&config.notification_types).expect("serialisable"))
        .bind(org_id)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn list_users_window(
        &self,
        org_id: i64,
        window: UserWindow,
        filter: &UserFilter,
    ) -> Result<Vec<UserRecord>> {
        let (col, lo, hi) = match window {
            UserWindow::Ord { lo, hi } => ("ord", lo, hi),
            UserWindow::Chg { lo, hi } => ("chg", lo, hi),
        };
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE org_id = $1 AND {col} >= $2 AND {col} < $3{} ORDER BY {col}",
            filter_sql(filter)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id)
            .bind(lo)
            .bind(hi)
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(user_from_row).collect())
    }

    async fn list_users_by_client_id(
        &self,
        org_id: i64,
        cuid: &str,
        filter: &UserFilter,
    ) -> Result<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE org_id = $1 AND client_user_id = $2{} ORDER BY ord",
            filter_sql(filter)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id)
            .bind(cuid)
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(user_from_row).collect())
    }

    async fn insert_event(
        &self,
        org_id: i64,
        event_id: &str,
        event_type: EventType,
        users: &[RequestUser],
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (org_id, event_id, event_type, status, users, num_requested, created_at) VALUES ($1, $2, $3, 'PENDING', $4, $5, $6)",
        )
        .bind(org_id)
        .bind(event_id)
        .bind(event_type.as_str())
        .bind(serde_json::to_string(users).expect("serialisable"))
        .bind(users.len() as i64)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn get_event(&self, org_id: i64, event_id: &str) -> Result<Option<EventRecord>> {
        let row = sqlx::query(
            "SELECT event_type, status, num_requested, num_completed, progress FROM events WHERE org_id = $1 AND event_id = $2",
        )
        .bind(org_id)
        .bind(event_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.map(|r| {
            let progress: EventProgress =
                serde_json::from_str(r.get::<&str, _>(4)).unwrap_or_default();
            EventRecord {
                event_id: event_id.to_string(),
                event_type: EventType::parse(r.get::<&str, _>(0)).unwrap_or(EventType::Create),
                status: r.get(1),
                num_requested: r.get(2),
                num_completed: r.get(3),
                failures: progress.failures,
            }
        }))
    }

    async fn claim_event(
        &self,
        owner: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<EventClaim>> {
        // Candidates are each organisation's oldest PENDING event only (events of one
        // organisation run in order), found by a loose scan of the partial index
        // `events_pending_org`: two probes per organisation with work, whatever the depth
        // of its queue. Testing every pending event against "no older one" instead cost
        // 0.1 to 2 s per claim on PostgreSQL with 9,000 queued behind a head leased by
        // another instance; grouping all pending events cost 10 ms per claim.
        let row = sqlx::query(&format!(
            "UPDATE events SET lease_owner = $1, lease_until = $2 WHERE id = (
                WITH RECURSIVE heads(org_id, id) AS (
                    SELECT o.org_id, (SELECT MIN(h.id) FROM events h WHERE h.status = 'PENDING' AND h.org_id = o.org_id)
                    FROM (SELECT MIN(org_id) AS org_id FROM events WHERE status = 'PENDING') o
                    UNION ALL
                    SELECT (SELECT MIN(p.org_id) FROM events p WHERE p.status = 'PENDING' AND p.org_id > heads.org_id),
                           (SELECT MIN(h.id) FROM events h WHERE h.status = 'PENDING' AND h.org_id =
                               (SELECT MIN(p.org_id) FROM events p WHERE p.status = 'PENDING' AND p.org_id > heads.org_id))
                    FROM heads WHERE heads.org_id IS NOT NULL)
                SELECT e.id FROM events e
                WHERE {} AND (e.lease_until IS NULL OR e.lease_until < $3)
                ORDER BY e.id LIMIT 1{})
             RETURNING id, org_id, event_id, event_type, users, progress, step_failures",
            self.dialect.in_subquery("e.id", "SELECT id FROM heads"),
            self.dialect.skip_locked("e")
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&self.writer)
        .await
        .map_err(err)?;
        Ok(row.map(|r| {
            let progress: EventProgress =
                serde_json::from_str(r.get::<&str, _>(5)).unwrap_or_default();
            EventClaim {
                id: r.get(0),
                org_id: r.get(1),
                event_id: r.get(2),
                event_type: EventType::parse(r.get::<&str, _>(3)).unwrap_or(EventType::Create),
                users: serde_json::from_str(r.get::<&str, _>(4)).unwrap_or_default(),
                cursor: progress.cursor,
                owner: owner.to_string(),
                step_failures: r.get(6),
            }
        }))
    }

    async fn process_event_step(
        &self,
        claim: &EventClaim,
        ops: &[UserOp],
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<UserOutcome>> {
        let mut tx = self.begin_write().await?;
        let (mut progress, total) = self.lock_step(&mut tx, claim).await?;
        // The organisation's row lock orders every writer's change numbers.
        let org = sqlx::query(&format!(
            "SELECT {ORG_COLS} FROM orgs WHERE id = $1{}",
            self.dialect.for_update()
        ))
        .bind(claim.org_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let org = org_from_row(&org);
        let (mut user_count, mut chg) = (org.user_count, org.chg);
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let cuid = op.user.client_user_id.as_str();
            let failed = |error| UserOutcome::Failed {
                client_user_id: cuid.to_string(),
                error,
            };
            let outcome = match claim.event_type {
                EventType::Create => {
                    if active_user(&mut tx, org.id, cuid).await?.is_some() {
                        failed(9716)
                    } else if let Some(h) = op.id_hash.as_deref() {
                        if hash_in_use(&mut tx, org.id, h, -1).await? {
                            failed(9641)
                        } else {
                            user_count += 1;
                            chg += 1;
                            let rec = UserRecord {
                                ord: user_count,
                                chg,
                                client_user_id: cuid.to_string(),
                                email: op.user.email.clone(),
                                invite_code: None,
                                id_hash: Some(h.to_string()),
                                status: UserStatus::Associated,
                            };
                            insert_user(&mut tx, org.id, &rec, op.user.managed_apple_id.as_deref())
                                .await?;
                            UserOutcome::Done(rec)
                        }
                    } else {
                        user_count += 1;
                        chg += 1;
                        let rec = UserRecord {
                            ord: user_count,
                            chg,
                            client_user_id: cuid.to_string(),
                            email: op.user.email.clone(),
                            invite_code: Some(op.new_invite_code.clone()),
                            id_hash: None,
                            status: UserStatus::Registered,
                        };
                        insert_user(&mut tx, org.id, &rec, None).await?;
                        UserOutcome::Done(rec)
                    }
                }
                EventType::Update => match active_user(&mut tx, org.id, cuid).await? {
                    None => failed(9609),
                    Some((row_id, mut rec)) => {
                        let hash_taken = match op.id_hash.as_deref() {
                            Some(h) => hash_in_use(&mut tx, org.id, h, row_id).await?,
                            None => false,
                        };
                        if hash_taken {
                            failed(9641)
                        } else {
                            chg += 1;
                            rec.chg = chg;
                            if op.user.email.is_some() {
                                rec.email = op.user.email.clone();
                            }
                            if let Some(h) = &op.id_hash {
                                rec.id_hash = Some(h.clone());
                                rec.status = UserStatus::Associated;
                            }
                            sqlx::query(
                                "UPDATE users SET chg = $1, email = $2, id_hash = $3, status = $4, managed_apple_id = COALESCE($5, managed_apple_id) WHERE id = $6",
                            )
                            .bind(rec.chg)
                            .bind(&rec.email)
                            .bind(&rec.id_hash)
                            .bind(rec.status.as_str())
                            .bind(&op.user.managed_apple_id)
                            .bind(row_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(err)?;
                            UserOutcome::Done(rec)
                        }
                    }
                },
                EventType::Retire => match active_user(&mut tx, org.id, cuid).await? {
                    None => failed(9609),
                    Some((row_id, mut rec)) => {
                        chg += 1;
                        rec.chg = chg;
                        rec.status = UserStatus::Retired;
                        sqlx::query("UPDATE users SET chg = $1, status = 'Retired' WHERE id = $2")
                            .bind(chg)
                            .bind(row_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(err)?;
                        UserOutcome::Done(rec)
                    }
                },
            };
            outcomes.push(outcome);
        }
        sqlx::query("UPDATE orgs SET user_count = $1, chg = $2 WHERE id = $3")
            .bind(user_count)
            .bind(chg)
            .bind(org.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        finish_step(
            &mut tx,
            claim,
            &org,
            &mut progress,
            total,
            &outcomes,
            now,
            lease_ms,
        )
        .await?;
        tx.commit().await.map_err(err)?;
        Ok(outcomes)
    }

    async fn event_step_failed(&self, claim: &EventClaim, now: i64, lease_ms: i64) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE events SET step_failures = step_failures + 1, lease_until = $1
             WHERE id = $2 AND lease_owner = $3 AND status = 'PENDING' RETURNING step_failures",
        )
        .bind(now + lease_ms)
        .bind(claim.id)
        .bind(&claim.owner)
        .fetch_optional(&self.writer)
        .await
        .map_err(err)?;
        row.map(|r| r.get(0)).ok_or(StoreError::LeaseLost)
    }

    async fn fail_event_step(
        &self,
        claim: &EventClaim,
        client_user_ids: &[String],
        error: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let (mut progress, total) = self.lock_step(&mut tx, claim).await?;
        // No user row is touched: only the organisation's uId and subscription are needed.
        let org = sqlx::query(&format!("SELECT {ORG_COLS} FROM orgs WHERE id = $1"))
            .bind(claim.org_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        let org = org_from_row(&org);
        let outcomes: Vec<UserOutcome> = client_user_ids
            .iter()
            .map(|cuid| UserOutcome::Failed {
                client_user_id: cuid.clone(),
                error,
            })
            .collect();
        finish_step(
            &mut tx,
            claim,
            &org,
            &mut progress,
            total,
            &outcomes,
            now,
            lease_ms,
        )
        .await?;
        tx.commit().await.map_err(err)
    }

    async fn find_invitation(&self, invite_code: &str) -> Result<Option<(i64, UserRecord)>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS}, org_id FROM users WHERE invite_code = $1"
        ))
        .bind(invite_code)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.map(|r| (r.get(7), user_from_row(&r))))
    }

    async fn accept_invitation(&self, invite_code: &str, id_hash: &str) -> Result<AcceptOutcome> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {USER_COLS}, org_id, id FROM users WHERE invite_code = $1"
        ))
        .bind(invite_code)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        else {
            return Ok(AcceptOutcome::Unknown);
        };
        let mut rec = user_from_row(&row);
        let (org_id, row_id): (i64, i64) = (row.get(7), row.get(8));
        match rec.status {
            UserStatus::Registered => {}
            UserStatus::Associated => return Ok(AcceptOutcome::AlreadyAccepted),
            UserStatus::Retired | UserStatus::Deleted => return Ok(AcceptOutcome::Retired),
        }
        if hash_in_use(&mut tx, org_id, id_hash, row_id).await? {
            return Ok(AcceptOutcome::AccountInUse);
        }
        let org = sqlx::query(&format!(
            "UPDATE orgs SET chg = chg + 1 WHERE id = $1 RETURNING {ORG_COLS}"
        ))
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let org = org_from_row(&org);
        rec.chg = org.chg;
        rec.status = UserStatus::Associated;
        rec.id_hash = Some(id_hash.to_string());
        sqlx::query("UPDATE users SET chg = $1, status = 'Associated', id_hash = $2 WHERE id = $3")
            .bind(rec.chg)
            .bind(id_hash)
            .bind(row_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let kind = cloudvpp_abwire::notification::types::USER_ASSOCIATED;
        if org.config.subscribed(kind) {
            insert_notification(
                &mut tx,
                org_id,
                kind,
                &logic::user_associated(&org.uid, rec.to_response()),
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(err)?;
        Ok(AcceptOutcome::Associated(rec))
    }

    async fn enqueue_notification(&self, n: &NewNotification) -> Result<()> {
        let mut conn = self.writer.acquire().await.map_err(err)?;
        insert_notification(&mut conn, n.org_id, &n.notification_type, &n.body, now_ms()).await
    }

    async fn notification_orgs(&self) -> Result<Vec<i64>> {
        // A loose scan of `outbox_org_due`: one probe per organisation with pending
        // notifications, however many it has.
        let rows = sqlx::query(
            "WITH RECURSIVE o(org_id) AS (
                SELECT MIN(org_id) FROM outbox WHERE state = 'pending'
                UNION ALL
                SELECT (SELECT MIN(p.org_id) FROM outbox p WHERE p.state = 'pending' AND p.org_id > o.org_id)
                FROM o WHERE o.org_id IS NOT NULL)
             SELECT org_id FROM o WHERE org_id IS NOT NULL",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn claim_notifications(
        &self,
        owner: &str,
        org_id: i64,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        let rows = sqlx::query(&format!(
            "UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN (
                SELECT id FROM outbox WHERE org_id = $3 AND state = 'pending' AND next_attempt_at <= $4
                  AND (lease_until IS NULL OR lease_until < $5) ORDER BY next_attempt_at, id LIMIT $6{})
             RETURNING id, body, attempts, next_attempt_at",
            self.dialect.skip_locked("outbox")
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(org_id)
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.writer)
        .await
        .map_err(err)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The URL and secret are read at send time, so a new configuration applies.
        let cfg =
            sqlx::query("SELECT notification_url, notification_auth_token FROM orgs WHERE id = $1")
                .bind(org_id)
                .fetch_one(&self.reader)
                .await
                .map_err(err)?;
        let (url, auth_token): (Option<String>, Option<String>) = (cfg.get(0), cfg.get(1));
        let mut rows: Vec<(i64, i64, OutboxItem)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(3),
                    r.get(0),
                    OutboxItem {
                        id: r.get(0),
                        body: r.get(1),
                        attempts: r.get(2),
                        url: url.clone(),
                        auth_token: auth_token.clone(),
                    },
                )
            })
            .collect();
        // RETURNING has no order.
        rows.sort_by_key(|(due, id, _)| (*due, *id));
        Ok(rows.into_iter().map(|(_, _, item)| item).collect())
    }

    async fn trim_notifications(&self, org_id: i64, keep: i64, now: i64) -> Result<u64> {
        let pending: i64 =
            sqlx::query("SELECT COUNT(*) FROM outbox WHERE org_id = $1 AND state = 'pending'")
                .bind(org_id)
                .fetch_one(&self.reader)
                .await
                .map_err(err)?
                .get(0);
        if pending <= keep {
            return Ok(0);
        }
        // The lease is checked again outside the subquery: PostgreSQL re-checks those
        // conditions on a row another instance leased meanwhile, and leaves it be.
        let done = sqlx::query(&format!(
            "UPDATE outbox SET state = 'dropped', last_error = 'dropped: the organisation''s backlog was full'
             WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < $1)
               AND id IN (SELECT id FROM outbox WHERE org_id = $2 AND state = 'pending'
                            AND (lease_until IS NULL OR lease_until < $3) ORDER BY id LIMIT $4{})",
            self.dialect.skip_locked("outbox")
        ))
        .bind(now)
        .bind(org_id)
        .bind(now)
        .bind(pending - keep)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(done.rows_affected())
    }

    async fn notification_delivered(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE outbox SET state = 'delivered', attempts = attempts + 1, delivered_at = $1, lease_owner = NULL, lease_until = NULL WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn notification_failed(&self, id: i64, retry_at: Option<i64>, error: &str) -> Result<()> {
        let sql = match retry_at {
            Some(_) => "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, lease_owner = NULL, lease_until = NULL WHERE id = $3",
            None => "UPDATE outbox SET attempts = attempts + 1, state = 'dead', next_attempt_at = COALESCE($1, next_attempt_at), last_error = $2, lease_owner = NULL, lease_until = NULL WHERE id = $3",
        };
        sqlx::query(sql)
            .bind(retry_at)
            .bind(error)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn notification_counts(&self, org_id: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) FROM outbox WHERE org_id = $1 GROUP BY state ORDER BY state",
        )
        .bind(org_id)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn get_limits(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT name, value FROM limits ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn set_limit(&self, name: &str, value: i64) -> Result<()> {
        sqlx::query("INSERT INTO limits (name, value) VALUES ($1, $2) ON CONFLICT(name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(value)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn count_request(&self, org_id: i64) -> Result<i64> {
        // One statement: the row lock (PostgreSQL) or the single writer (SQLite) makes the
        // increment atomic. A request stamped with an older second (it read the clock just
        // before another moved the window on) counts into the newer window.
        let row = sqlx::query(&format!(
            "INSERT INTO request_windows (org_id, second, count) VALUES ($1, {}, 1)
             ON CONFLICT (org_id) DO UPDATE SET
               count = CASE WHEN excluded.second > request_windows.second THEN 1 ELSE request_windows.count + 1 END,
               second = CASE WHEN excluded.second > request_windows.second THEN excluded.second ELSE request_windows.second END
             RETURNING count",
            self.dialect.unix_seconds()
        ))
        .bind(org_id)
        .fetch_one(&self.writer)
        .await
        .map_err(err)?;
        Ok(row.get(0))
    }
}

async fn insert_user(
    conn: &mut AnyConnection,
    org_id: i64,
    rec: &UserRecord,
    maid: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (org_id, ord, chg, client_user_id, email, managed_apple_id, invite_code, id_hash, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(org_id)
    .bind(rec.ord)
    .bind(rec.chg)
    .bind(&rec.client_user_id)
    .bind(&rec.email)
    .bind(maid)
    .bind(&rec.invite_code)
    .bind(&rec.id_hash)
    .bind(rec.status.as_str())
    .execute(conn)
    .await
    .map_err(err)?;
    Ok(())
}
