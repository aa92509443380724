//! The cloudvpp storage traits implemented once in SQL, for SQLite and PostgreSQL.
//!
//! Work is handed out with row leases (on PostgreSQL taken under `FOR UPDATE SKIP LOCKED`),
//! and the per-organisation counters are taken under the organisation's row lock (on SQLite,
//! under the one writer), so concurrent writers never share a change number and a sync
//! never skips a change.

mod engine;
mod gauges;
mod mdm;
mod numbering;
mod row;
pub use mdm::SIGNALS_CHANNEL;

use async_trait::async_trait;
use cloudvpp_abwire::assets::{PricingParam, ProductType};
use cloudvpp_abwire::UserStatus;
use cloudvpp_store::secret;
use cloudvpp_store::{
    AppsBooksStore, AssetKey, AssetRecord, AssignmentFilter, AssignmentPage, AssignmentRecord,
    ClientConfig, EventClaim, EventId, EventPayload, EventProgress, EventRecord, EventStatus,
    EventType, NewUser, Org, OrgId, OrgTx, OutboxItem, Result, StoreError, Target, TokenRecord,
    UserFilter, UserOrder, UserPage, UserRecord, UserTx, UserUpdate,
};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use std::collections::BTreeMap;

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

    /// How a read of several statements that must agree (a page and the counts that place
    /// it) begins: one snapshot for all of them. SQLite's WAL readers have one already.
    fn begin_read(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    /// An aggregate of a query's rows as one JSON text (an array holding, for each row, the
    /// array of its `cols`; `[]` when there is none), where a page of many rows is better
    /// read as one value; None where it is better read row by row.
    ///
    /// SQLite: one value. sqlx's SQLite driver hands rows over one at a time from its
    /// worker thread, and that handing over, not SQLite, was most of a Get Users page's
    /// time. The order of the rows is not promised (an ordered aggregate costs SQLite a
    /// sort into a temporary b-tree): the reader puts them in order, one pass when they
    /// come in order, as they do.
    /// PostgreSQL: rows. Its driver reads them off the socket in the calling task, and
    /// building the JSON (`json_agg`) cost PostgreSQL more, about 1 ms a page of 1,000,
    /// than reading the rows costs us (a full sync of 1,000,000 users: 3.4 s against 3.0 s).
    fn json_rows(self, cols: &str) -> Option<String> {
        match self {
            Dialect::Sqlite => Some(format!("json_group_array(json_array({cols}))")),
            Dialect::Postgres => None,
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
    /// Kept by the MDM writers (`enqueue`, `associate_cert`): see `cloudvpp_store::signals`.
    pub(crate) signals: std::sync::Arc<cloudvpp_store::signals::QueueSignals>,
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
            signals: std::sync::Arc::new(cloudvpp_store::signals::QueueSignals::local()),
        }
    }

    /// The store with the queue signals the backend keeps (shared memory, or memory fed by
    /// other instances' notifications); [`SqlStore::new`] assumes one process.
    pub fn with_signals(
        mut self,
        signals: std::sync::Arc<cloudvpp_store::signals::QueueSignals>,
    ) -> Self {
        self.signals = signals;
        self
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
                let id: i64 = row::get(&r, "id")?;
                let plain: String = row::get(&r, column)?;
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

    /// The page of users of `kind` on `axis` from key `$2` on, at most `$3` records, of
    /// organisation `$1`, as one value: the records as one JSON text ([`Dialect::json_rows`]
    /// of [`USER_COLS`], read by [`users_from_json_rows`]); None where the dialect reads
    /// pages row by row ([`SqlStore::page_rows_sql`]).
    fn page_json_sql(&self, axis: Axis, kind: Kind) -> Option<String> {
        let rows = self.dialect.json_rows(USER_COLS)?;
        Some(format!(
            "SELECT {rows} FROM ({}) p",
            Self::page_rows_sql(axis, kind, "")
        ))
    }

    /// The same page row by row, each row [`USER_COLS`] after `extra` columns.
    fn page_rows_sql(axis: Axis, kind: Kind, extra: &str) -> String {
        let col = axis.col;
        format!(
            "SELECT {extra}{USER_COLS} FROM users WHERE org_id = $1 AND {col} >= $2{} ORDER BY {col} LIMIT $3",
            kind.sql("users"),
        )
    }

    /// The organisation as `conn` reads it, its row locked until the end of the
    /// transaction when `lock` (PostgreSQL; SQLite's writer excludes the others already).
    pub(crate) async fn org_in(
        &self,
        conn: &mut AnyConnection,
        org_id: OrgId,
        lock: bool,
    ) -> Result<Org> {
        let suffix = if lock { self.dialect.for_update() } else { "" };
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLS} FROM orgs WHERE id = $1{suffix}"
        ))
        .bind(org_id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(err)?
        .ok_or_else(|| StoreError::other(format!("no organisation {org_id}")))?;
        org_from_row(&row)
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        self.writer
            .begin_with(self.dialect.begin())
            .await
            .map_err(err)
    }
}

const ORG_COLS: &str = "id, uid, name, secret, user_count, chg, asset_chg, assign_chg, mdm_info, notification_url, notification_auth_token, notification_types, country, default_platform";
/// [`ORG_COLS`] of `orgs o`, for a join.
const ORG_COLS_O: &str = "o.id, o.uid, o.name, o.secret, o.user_count, o.chg, o.asset_chg, o.assign_chg, o.mdm_info, o.notification_url, o.notification_auth_token, o.notification_types, o.country, o.default_platform";
const USER_COLS: &str = "ord, chg, client_user_id, email, invite_code, id_hash, status";

fn org_from_row(r: &AnyRow) -> Result<Org> {
    Ok(Org {
        id: OrgId(row::get(r, "id")?),
        uid: row::get(r, "uid")?,
        name: row::get(r, "name")?,
        secret: row::get(r, "secret")?,
        user_count: row::get(r, "user_count")?,
        chg: row::get(r, "chg")?,
        asset_chg: row::get(r, "asset_chg")?,
        assign_chg: row::get(r, "assign_chg")?,
        config: ClientConfig {
            mdm_info: row::json_opt(r, "mdm_info")?,
            notification_url: row::get(r, "notification_url")?,
            notification_auth_token: row::get(r, "notification_auth_token")?,
            notification_types: row::json(r, "notification_types")?,
        },
        country: row::get(r, "country")?,
        default_platform: row::get(r, "default_platform")?,
    })
}

fn user_from_row(r: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        ord: row::get(r, "ord")?,
        chg: row::get(r, "chg")?,
        client_user_id: row::get(r, "client_user_id")?,
        email: row::get(r, "email")?,
        invite_code: row::get(r, "invite_code")?,
        id_hash: row::get(r, "id_hash")?,
        status: row::parsed(r, "status", UserStatus::parse)?,
    })
}

const ASSET_COLS: &str = "a.adam_id, a.pricing_param, a.product_type, a.supported_platforms, a.device_assignable, a.revocable, a.total_count, a.assigned_count, a.retired_count";

fn asset_from_row(r: &AnyRow) -> Result<AssetRecord> {
    Ok(AssetRecord {
        adam_id: row::get(r, "adam_id")?,
        pricing_param: row::parsed(r, "pricing_param", PricingParam::parse)?,
        product_type: row::parsed(r, "product_type", ProductType::parse)?,
        supported_platforms: row::json(r, "supported_platforms")?,
        device_assignable: row::flag(r, "device_assignable")?,
        revocable: row::flag(r, "revocable")?,
        total_count: row::get(r, "total_count")?,
        assigned_count: row::get(r, "assigned_count")?,
        retired_count: row::get(r, "retired_count")?,
    })
}

const ASSIGNMENT_COLS: &str =
    "a.adam_id, a.pricing_param, a.target_kind, a.target, a.chg, a.user_active";

fn assignment_from_row(r: &AnyRow) -> Result<AssignmentRecord> {
    let value: String = row::get(r, "target")?;
    let target = match row::get::<i64>(r, "target_kind")? {
        0 => Target::User(value),
        1 => Target::Serial(value),
        other => {
            return Err(StoreError::corrupt(
                "assignments.target_kind",
                format!("{other} is neither 0 (user) nor 1 (device)"),
            ))
        }
    };
    Ok(AssignmentRecord {
        asset: AssetKey {
            adam_id: row::get(r, "adam_id")?,
            pricing_param: row::parsed(r, "pricing_param", PricingParam::parse)?,
        },
        target,
        chg: row::get(r, "chg")?,
        user_active: row::flag(r, "user_active")?,
    })
}

/// `target_kind` and `target` of a target.
fn target_cols(t: &Target) -> (i64, &str) {
    match t {
        Target::User(c) => (0, c.as_str()),
        Target::Serial(s) => (1, s.as_str()),
    }
}

fn users_from_rows(rows: &[AnyRow]) -> Result<Vec<UserRecord>> {
    rows.iter().map(user_from_row).collect()
}

/// The columns of [`USER_COLS`], in order, as one row of [`Dialect::json_rows`].
type UserTuple = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// Users from the JSON text column `col` that [`Dialect::json_rows`] of [`USER_COLS`]
/// made, typed as [`user_from_row`] types them, in the order of `axis`.
fn users_from_json_rows(r: &AnyRow, col: &'static str, axis: Axis) -> Result<Vec<UserRecord>> {
    let mut rows: Vec<UserTuple> = row::json(r, col)?;
    // Stable, and one pass over rows already in order.
    if axis == AXIS_ORD {
        rows.sort_by_key(|u| u.0);
    } else {
        rows.sort_by_key(|u| u.1);
    }
    rows.into_iter()
        .map(
            |(ord, chg, client_user_id, email, invite_code, id_hash, status)| {
                Ok(UserRecord {
                    status: UserStatus::parse(&status).ok_or_else(|| {
                        StoreError::corrupt("status", format!("unknown value {status:?}"))
                    })?,
                    ord,
                    chg,
                    client_user_id,
                    email,
                    invite_code,
                    id_hash,
                })
            },
        )
        .collect()
}

/// Which records a filter keeps, by the two kinds the counted blocks count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    All,
    Active,
    Retired,
    Nothing,
}

impl Kind {
    fn of(f: &UserFilter) -> Kind {
        match (f.active_only, f.retired_only) {
            (false, false) => Kind::All,
            (true, false) => Kind::Active,
            (false, true) => Kind::Retired,
            (true, true) => Kind::Nothing,
        }
    }

    /// The condition on `table`, as its partial indexes (`users_*_active|retired`,
    /// `assignments_active|inactive`) state it.
    fn sql(self, table: &str) -> &'static str {
        let assignments = table == "assignments";
        match self {
            Kind::All => "",
            Kind::Active if assignments => " AND user_active = 1",
            Kind::Retired if assignments => " AND user_active = 0",
            Kind::Active => " AND status IN ('Registered', 'Associated')",
            Kind::Retired => " AND status IN ('Retired', 'Deleted')",
            Kind::Nothing => " AND 1 = 0",
        }
    }

    /// The count of `user_blocks` it keeps.
    fn count(self) -> &'static str {
        match self {
            Kind::All => "(active + retired)",
            Kind::Active => "active",
            Kind::Retired => "retired",
            Kind::Nothing => "0",
        }
    }
}

fn filter_sql(f: &UserFilter) -> &'static str {
    Kind::of(f).sql("users")
}

/// Counted blocks (`user_blocks`, migration 0010): for each organisation, axis (`ord`,
/// `chg`) and level L (1-3), how many active and retired records have a key `k` with
/// `k >> BLOCK_SHIFTS[L-1]` equal to the block. The n-th record of a filtered listing is
/// found by walking them from the top level down (at most 256 rows a level, then at most
/// 256 keys), so a page costs the same whatever its index: no OFFSET over what lies
/// before it. The writers keep them exact in the transaction that writes the records.
const BLOCK_SHIFTS: [u32; 3] = [8, 16, 24];
/// Blocks of one level within one block of the level above.
const FANOUT_SHIFT: u32 = 8;

/// One ordering the counted blocks count: its number in `user_blocks.axis`, and the table
/// and column of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Axis {
    id: i64,
    table: &'static str,
    col: &'static str,
}

/// Users in creation order.
const AXIS_ORD: Axis = Axis {
    id: 0,
    table: "users",
    col: "ord",
};
/// Users in change order.
const AXIS_CHG: Axis = Axis {
    id: 1,
    table: "users",
    col: "chg",
};
/// Assignments in change order (`active`: of active users and devices).
const AXIS_ASSIGN: Axis = Axis {
    id: 2,
    table: "assignments",
    col: "chg",
};

/// Changes to the counted blocks of one transaction, summed per block.
#[derive(Default)]
struct BlockDeltas(BTreeMap<(i64, i64, i64), (i64, i64)>);

impl BlockDeltas {
    /// One record of `status` more (`d` = 1) or less (-1) at `key` of `axis`.
    fn add(&mut self, axis: Axis, key: i64, status: UserStatus, d: i64) {
        self.add_kind(axis, key, cloudvpp_store::is_active(status), d);
    }

    /// One record more (`d` = 1) or less (-1) at `key` of `axis`, counted as `active` or not.
    fn add_kind(&mut self, axis: Axis, key: i64, active: bool, d: i64) {
        for (i, shift) in BLOCK_SHIFTS.iter().enumerate() {
            let e = self
                .0
                .entry((axis.id, i as i64 + 1, key >> shift))
                .or_default();
            if active {
                e.0 += d;
            } else {
                e.1 += d;
            }
        }
    }

    /// Writes them, several blocks per statement.
    async fn write(self, conn: &mut AnyConnection, org_id: OrgId) -> Result<()> {
        let rows: Vec<_> = self.0.into_iter().filter(|(_, d)| *d != (0, 0)).collect();
        for chunk in rows.chunks(row::rows_per_statement(6, 0)) {
            let sql = format!(
                "INSERT INTO user_blocks (org_id, axis, level, block, active, retired) VALUES {}
                 ON CONFLICT (org_id, axis, level, block) DO UPDATE SET
                   active = user_blocks.active + excluded.active,
                   retired = user_blocks.retired + excluded.retired",
                row::tuples(1, chunk.len(), 6)
            );
            let mut q = sqlx::query(&sql);
            for ((axis, level, block), (a, r)) in chunk {
                q = q
                    .bind(org_id.0)
                    .bind(*axis)
                    .bind(*level)
                    .bind(*block)
                    .bind(*a)
                    .bind(*r);
            }
            q.execute(&mut *conn).await.map_err(err)?;
        }
        Ok(())
    }
}

/// How many records of `kind` have a key at most `x` on `axis`: the blocks wholly below
/// `x` at each level, plus the keys of `x`'s level-1 block up to it.
async fn rank(
    conn: &mut AnyConnection,
    org_id: OrgId,
    axis: Axis,
    kind: Kind,
    x: i64,
) -> Result<i64> {
    let [s1, s2, s3] = BLOCK_SHIFTS;
    let blocks = |level: i64, lo: &str, hi: &str| {
        format!(
            "(SELECT CAST(COALESCE(SUM({}), 0) AS BIGINT) FROM user_blocks WHERE org_id = $1 AND axis = $2 AND level = {level} AND block >= {lo} AND block < {hi})",
            kind.count()
        )
    };
    let sql = format!(
        "SELECT CAST({} + {} + {} + (SELECT COUNT(*) FROM {table} WHERE org_id = $1 AND {col} >= $8 AND {col} <= $9{}) AS BIGINT) AS n",
        blocks(3, "0", "$3"),
        blocks(2, "$4", "$5"),
        blocks(1, "$6", "$7"),
        kind.sql(axis.table),
        table = axis.table,
        col = axis.col,
    );
    let n = sqlx::query(&sql)
        .bind(org_id.0)
        .bind(axis.id)
        .bind(x >> s3)
        .bind((x >> s3) << FANOUT_SHIFT)
        .bind(x >> s2)
        .bind((x >> s2) << FANOUT_SHIFT)
        .bind(x >> s1)
        .bind((x >> s1) << FANOUT_SHIFT)
        .bind(x)
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    row::get(&n, "n")
}

/// How many records of `kind` the organisation has on `axis`.
async fn kind_total(
    conn: &mut AnyConnection,
    org_id: OrgId,
    axis: Axis,
    kind: Kind,
) -> Result<i64> {
    let n = sqlx::query(&format!(
        "SELECT CAST(COALESCE(SUM({}), 0) AS BIGINT) AS n FROM user_blocks WHERE org_id = $1 AND axis = $2 AND level = 3",
        kind.count()
    ))
    .bind(org_id.0)
    .bind(axis.id)
    .fetch_one(&mut *conn)
    .await
    .map_err(err)?;
    row::get(&n, "n")
}

/// The key on `axis` of the `n`-th (from 1) record of `kind`, walking the counted blocks
/// down; None when there are fewer.
async fn select_nth(
    conn: &mut AnyConnection,
    org_id: OrgId,
    axis: Axis,
    kind: Kind,
    n: i64,
) -> Result<Option<i64>> {
    let mut rem = n;
    let (mut lo, mut hi) = (0i64, i64::MAX);
    for level in (1..=BLOCK_SHIFTS.len() as i64).rev() {
        let rows = sqlx::query(&format!(
            "SELECT block, {} AS n FROM user_blocks WHERE org_id = $1 AND axis = $2 AND level = $3 AND block >= $4 AND block < $5 ORDER BY block",
            kind.count()
        ))
        .bind(org_id.0)
        .bind(axis.id)
        .bind(level)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let mut found = None;
        for r in &rows {
            let count: i64 = row::get(r, "n")?;
            if rem <= count {
                found = Some(row::get::<i64>(r, "block")?);
                break;
            }
            rem -= count;
        }
        let Some(block) = found else {
            return Ok(None);
        };
        lo = block << FANOUT_SHIFT;
        hi = (block + 1) << FANOUT_SHIFT;
    }
    let (table, col) = (axis.table, axis.col);
    let key = sqlx::query(&format!(
        "SELECT {col} AS k FROM {table} WHERE org_id = $1 AND {col} >= $2 AND {col} < $3{} ORDER BY {col} LIMIT 1 OFFSET $4",
        kind.sql(table)
    ))
    .bind(org_id.0)
    .bind(lo)
    .bind(hi)
    .bind(rem - 1)
    .fetch_optional(&mut *conn)
    .await
    .map_err(err)?;
    match key {
        Some(r) => Ok(Some(row::get(&r, "k")?)),
        None => Err(StoreError::corrupt(
            "user_blocks",
            format!(
                "a level-1 block of axis {} counts more records than it holds",
                axis.id
            ),
        )),
    }
}

/// Queues notifications of one organisation, several rows per statement.
async fn insert_notifications(
    conn: &mut AnyConnection,
    org_id: OrgId,
    kind: &str,
    bodies: &[String],
    now: i64,
) -> Result<()> {
    for chunk in bodies.chunks(row::rows_per_statement(5, 0)) {
        let sql = format!(
            "INSERT INTO outbox (org_id, notification_type, body, next_attempt_at, created_at) VALUES {}",
            row::tuples(1, chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for body in chunk {
            q = q.bind(org_id.0).bind(kind).bind(body).bind(now).bind(now);
        }
        q.execute(&mut *conn).await.map_err(err)?;
    }
    Ok(())
}

/// Values per `IN (...)` list (see `row::MAX_PARAMS`).
const KEYS_PER_QUERY: usize = row::MAX_PARAMS - 1;

/// When a row was made (`created_at`, `revoked_at`): bookkeeping, read by no rule. Every
/// time a rule reads comes from the caller's clock, as a `now` argument.
pub(crate) fn now_ms() -> i64 {
    use cloudvpp_store::clock::Clock;
    cloudvpp_store::clock::SystemClock.now_ms()
}

#[async_trait]
impl AppsBooksStore for SqlStore {
    #[tracing::instrument(level = "debug", skip(self, secret, stoken))]
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
        let id: i64 = row::get(
            &sqlx::query(
                "INSERT INTO orgs (uid, name, secret, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(uid)
            .bind(name)
            .bind(secret)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?,
            "id",
        )?;
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
        self.get_org(OrgId(id))
            .await?
            .ok_or_else(|| StoreError::other("organisation vanished"))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_orgs(&self) -> Result<Vec<Org>> {
        let rows = sqlx::query(&format!("SELECT {ORG_COLS} FROM orgs ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        rows.iter().map(org_from_row).collect()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_org(&self, org_id: OrgId) -> Result<Option<Org>> {
        let row = sqlx::query(&format!("SELECT {ORG_COLS} FROM orgs WHERE id = $1"))
            .bind(org_id.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(err)?;
        row.as_ref().map(org_from_row).transpose()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn find_org(&self, uid_or_name: &str) -> Result<Option<Org>> {
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLS} FROM orgs WHERE uid = $1 OR name = $2 ORDER BY id LIMIT 1"
        ))
        .bind(uid_or_name)
        .bind(uid_or_name)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.as_ref().map(org_from_row).transpose()
    }

    #[tracing::instrument(level = "debug", skip(self, stoken))]
    async fn renew_token(&self, org_id: OrgId, stoken: &str, expires_at: i64) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE org_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(org_id.0)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(
            "INSERT INTO tokens (org_id, stoken, expires_at_secs, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(org_id.0)
        .bind(secret::digest(stoken))
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_token(&self, stoken: &str) -> Result<Option<TokenRecord>> {
        let row =
            sqlx::query("SELECT org_id, expires_at_secs, revoked_at FROM tokens WHERE stoken = $1")
                .bind(secret::digest(stoken))
                .fetch_optional(&self.reader)
                .await
                .map_err(err)?;
        row.map(|r| {
            Ok(TokenRecord {
                org_id: OrgId(row::get(&r, "org_id")?),
                expires_at: row::get(&r, "expires_at_secs")?,
                revoked: row::get::<Option<i64>>(&r, "revoked_at")?.is_some(),
            })
        })
        .transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_token_with_org(&self, stoken: &str) -> Result<Option<(TokenRecord, Org)>> {
        let row = sqlx::query(&format!(
            "SELECT t.org_id, t.expires_at_secs, t.revoked_at, {} FROM tokens t JOIN orgs o ON o.id = t.org_id WHERE t.stoken = $1",
            ORG_COLS_O
        ))
        .bind(secret::digest(stoken))
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.map(|r| {
            let token = TokenRecord {
                org_id: OrgId(row::get(&r, "org_id")?),
                expires_at: row::get(&r, "expires_at_secs")?,
                revoked: row::get::<Option<i64>>(&r, "revoked_at")?.is_some(),
            };
            Ok((token, org_from_row(&r)?))
        })
        .transpose()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn current_token_expiry(&self, org_id: OrgId) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT expires_at_secs FROM tokens WHERE org_id = $1 AND revoked_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(org_id.0)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.map(|r| row::get(&r, "expires_at_secs")).transpose()
    }

    #[tracing::instrument(level = "debug", skip(self, config))]
    async fn set_client_config(&self, org_id: OrgId, config: &ClientConfig) -> Result<()> {
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
        .bind(org_id.0)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn set_org_profile(
        &self,
        org_id: OrgId,
        country: Option<&str>,
        default_platform: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE orgs SET country = COALESCE($1, country), default_platform = COALESCE($2, default_platform) WHERE id = $3",
        )
        .bind(country)
        .bind(default_platform)
        .bind(org_id.0)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_users_page(
        &self,
        org_id: OrgId,
        order: UserOrder,
        filter: &UserFilter,
        first: i64,
        size: i64,
    ) -> Result<UserPage> {
        let kind = Kind::of(filter);
        if kind == Kind::Nothing {
            return Ok(UserPage::default());
        }
        let (axis, since) = match order {
            UserOrder::Created => (AXIS_ORD, None),
            UserOrder::ChangedSince(v) => (AXIS_CHG, Some(v)),
        };
        // `ord` is dense: the unfiltered creation order needs no blocks.
        let dense = axis == AXIS_ORD && kind == Kind::All;
        if first < 0 || size < 1 {
            // Nothing to read; the listing's size only.
            return Ok(UserPage {
                users: Vec::new(),
                total: self
                    .list_users_page(org_id, order, filter, 0, 1)
                    .await?
                    .total,
            });
        }
        if dense {
            // The common page (a full sync) in one statement, so in one snapshot without a
            // transaction: the listing's size and the records from `ord` = first + 1 on.
            let total =
                "CAST(COALESCE((SELECT user_count FROM orgs WHERE id = $1), 0) AS BIGINT) AS total";
            let json = self.page_json_sql(AXIS_ORD, kind);
            let q = match &json {
                Some(page) => format!("SELECT {total}, ({page}) AS page"),
                None => Self::page_rows_sql(AXIS_ORD, kind, &format!("{total}, ")),
            };
            let rows = sqlx::query(&q)
                .bind(org_id.0)
                .bind(first + 1)
                .bind(size)
                .fetch_all(&self.reader)
                .await
                .map_err(err)?;
            if let Some(r) = rows.first() {
                let total: i64 = row::get(r, "total")?;
                let users = match json {
                    None => users_from_rows(&rows)?,
                    Some(_) if first < total => users_from_json_rows(r, "page", AXIS_ORD)?,
                    Some(_) => Vec::new(),
                };
                return Ok(UserPage { users, total });
            }
            // No record from there (rows, not JSON): past the end, told below.
        }
        let mut tx = self
            .reader
            .begin_with(self.dialect.begin_read())
            .await
            .map_err(err)?;
        // Records of the kind before the listing starts, and in all.
        let before = match since {
            Some(v) => rank(&mut tx, org_id, axis, kind, v).await?,
            None => 0,
        };
        let all = if dense {
            let r = sqlx::query("SELECT user_count FROM orgs WHERE id = $1")
                .bind(org_id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
            match r {
                Some(r) => row::get(&r, "user_count")?,
                None => 0,
            }
        } else {
            kind_total(&mut tx, org_id, axis, kind).await?
        };
        let total = all - before;
        if first >= total {
            tx.commit().await.map_err(err)?;
            return Ok(UserPage {
                users: Vec::new(),
                total,
            });
        }
        let start = if dense {
            Some(first + 1)
        } else {
            select_nth(&mut tx, org_id, axis, kind, before + first + 1).await?
        };
        let users = match (start, self.page_json_sql(axis, kind)) {
            (None, _) => Vec::new(),
            (Some(start), Some(page)) => {
                let r = sqlx::query(&format!("SELECT ({page}) AS page"))
                    .bind(org_id.0)
                    .bind(start)
                    .bind(size)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(err)?;
                users_from_json_rows(&r, "page", axis)?
            }
            (Some(start), None) => {
                let rows = sqlx::query(&Self::page_rows_sql(axis, kind, ""))
                    .bind(org_id.0)
                    .bind(start)
                    .bind(size)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(err)?;
                users_from_rows(&rows)?
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(UserPage { users, total })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_users_by_client_id(
        &self,
        org_id: OrgId,
        cuid: &str,
        filter: &UserFilter,
    ) -> Result<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE org_id = $1 AND client_user_id = $2{} ORDER BY ord",
            filter_sql(filter)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.0)
            .bind(cuid)
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        users_from_rows(&rows)
    }

    #[tracing::instrument(level = "debug", skip(self, id_hash))]
    async fn list_users_by_id_hash(
        &self,
        org_id: OrgId,
        id_hash: &str,
        filter: &UserFilter,
    ) -> Result<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE org_id = $1 AND id_hash = $2{} ORDER BY ord",
            filter_sql(filter)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.0)
            .bind(id_hash)
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        users_from_rows(&rows)
    }

    #[tracing::instrument(level = "debug", skip(self, payload))]
    async fn insert_event(
        &self,
        org_id: OrgId,
        event_id: &EventId,
        event_type: EventType,
        payload: &EventPayload,
        num_requested: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (org_id, event_id, event_type, status, users, num_requested, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(org_id.0)
        .bind(event_id.as_str())
        .bind(event_type.as_str())
        .bind(EventStatus::Pending.as_str())
        .bind(serde_json::to_string(payload).expect("serialisable"))
        .bind(num_requested)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_event(&self, org_id: OrgId, event_id: &EventId) -> Result<Option<EventRecord>> {
        let row = sqlx::query(
            "SELECT event_type, status, num_requested, num_completed, progress FROM events WHERE org_id = $1 AND event_id = $2",
        )
        .bind(org_id.0)
        .bind(event_id.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.map(|r| {
            let progress: EventProgress = row::json(&r, "progress")?;
            Ok(EventRecord {
                event_id: event_id.clone(),
                event_type: row::parsed(&r, "event_type", EventType::parse)?,
                status: row::parsed(&r, "status", EventStatus::parse)?,
                num_requested: row::get(&r, "num_requested")?,
                num_completed: row::get(&r, "num_completed")?,
                failures: progress.failures,
                asset_failures: progress.asset_failures,
            })
        })
        .transpose()
    }

    #[tracing::instrument(level = "debug", skip(self))]
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
        row.map(|r| {
            let progress: EventProgress = row::json(&r, "progress")?;
            Ok(EventClaim {
                id: row::get(&r, "id")?,
                org_id: OrgId(row::get(&r, "org_id")?),
                event_id: EventId::new(row::get::<String>(&r, "event_id")?),
                event_type: row::parsed(&r, "event_type", EventType::parse)?,
                payload: row::json(&r, "users")?,
                cursor: progress.cursor,
                owner: owner.to_string(),
                step_failures: row::get(&r, "step_failures")?,
            })
        })
        .transpose()
    }

    #[tracing::instrument(level = "debug", skip(self, id_hash))]
    async fn begin_user_write(&self, org_id: OrgId, id_hash: &str) -> Result<Box<dyn UserTx>> {
        Ok(Box::new(self.begin_user_tx(org_id, id_hash).await?))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn number_changes(&self) -> Result<u64> {
        self.number_all_changes().await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn begin_org_write(&self, org_id: OrgId) -> Result<Box<dyn OrgTx>> {
        let mut tx = self.begin_write().await?;
        // The organisation's row lock orders every writer's change numbers.
        let org = self.org_in(&mut tx, org_id, true).await?;
        Ok(Box::new(SqlOrgTx {
            tx,
            org,
            dialect: self.dialect,
        }))
    }

    #[tracing::instrument(level = "debug", skip(self, claim), fields(event_id = %claim.event_id))]
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
        row.map(|r| row::get(&r, "step_failures"))
            .transpose()?
            .ok_or(StoreError::LeaseLost)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_invitation(&self, invite_code: &str) -> Result<Option<(OrgId, UserRecord)>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS}, org_id FROM users WHERE invite_code = $1"
        ))
        .bind(invite_code)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.map(|r| Ok((OrgId(row::get(&r, "org_id")?), user_from_row(&r)?)))
            .transpose()
    }

    async fn notification_orgs(&self) -> Result<Vec<OrgId>> {
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
        rows.iter()
            .map(|r| Ok(OrgId(row::get(r, "org_id")?)))
            .collect()
    }

    async fn claim_notifications(
        &self,
        owner: &str,
        org_id: OrgId,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        // The choice is a materialised CTE, run once: as an `IN (subquery)`, PostgreSQL may
        // run it again for each row of a semi-join, and the locked subquery then skips the
        // rows this very statement updated and goes on past its LIMIT.
        let rows = sqlx::query(&format!(
            "WITH picked AS MATERIALIZED (
                SELECT id FROM outbox WHERE org_id = $3 AND state = 'pending' AND next_attempt_at <= $4
                  AND (lease_until IS NULL OR lease_until < $5) ORDER BY next_attempt_at, id LIMIT $6{})
             UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM picked)
             RETURNING id, body, attempts, next_attempt_at",
            self.dialect.skip_locked("outbox")
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(org_id.0)
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
                .bind(org_id.0)
                .fetch_one(&self.reader)
                .await
                .map_err(err)?;
        let url: Option<String> = row::get(&cfg, "notification_url")?;
        let auth_token: Option<String> = row::get(&cfg, "notification_auth_token")?;
        let mut rows: Vec<(i64, i64, OutboxItem)> = rows
            .iter()
            .map(|r| {
                let id = row::get(r, "id")?;
                Ok((
                    row::get(r, "next_attempt_at")?,
                    id,
                    OutboxItem {
                        id,
                        body: row::get(r, "body")?,
                        attempts: row::get(r, "attempts")?,
                        url: url.clone(),
                        auth_token: auth_token.clone(),
                    },
                ))
            })
            .collect::<Result<_>>()?;
        // RETURNING has no order.
        rows.sort_by_key(|(due, id, _)| (*due, *id));
        Ok(rows.into_iter().map(|(_, _, item)| item).collect())
    }

    async fn trim_notifications(&self, org_id: OrgId, keep: i64, now: i64) -> Result<u64> {
        let pending: i64 = row::get(
            &sqlx::query(
                "SELECT COUNT(*) AS n FROM outbox WHERE org_id = $1 AND state = 'pending'",
            )
            .bind(org_id.0)
            .fetch_one(&self.reader)
            .await
            .map_err(err)?,
            "n",
        )?;
        if pending <= keep {
            return Ok(0);
        }
        // A materialised CTE, run once (see claim_notifications: as a subquery it dropped the
        // whole backlog on PostgreSQL). The lease is checked again outside it: PostgreSQL
        // re-checks those conditions on a row another instance leased meanwhile.
        let done = sqlx::query(&format!(
            "WITH picked AS MATERIALIZED (
                SELECT id FROM outbox WHERE org_id = $2 AND state = 'pending'
                  AND (lease_until IS NULL OR lease_until < $3) ORDER BY id LIMIT $4{})
             UPDATE outbox SET state = 'dropped', last_error = 'dropped: the organisation''s backlog was full'
             WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < $1)
               AND id IN (SELECT id FROM picked)",
            self.dialect.skip_locked("outbox")
        ))
        .bind(now)
        .bind(org_id.0)
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

    async fn notification_counts(&self, org_id: OrgId) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM outbox WHERE org_id = $1 GROUP BY state ORDER BY state",
        )
        .bind(org_id.0)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| Ok((row::get(r, "state")?, row::get(r, "n")?)))
            .collect()
    }

    async fn get_limits(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT name, value FROM limits ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| Ok((row::get(r, "name")?, row::get(r, "value")?)))
            .collect()
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

    async fn count_request(&self, org_id: OrgId) -> Result<i64> {
        // One statement: the row lock (PostgreSQL) or the single writer (SQLite) makes the
        // increment atomic. A request stamped with an older second (it read the clock just
        // before another moved the window on) counts into the newer window.
        let row = sqlx::query(&format!(
            "INSERT INTO request_windows (org_id, second, count) VALUES ($1, {}, 1)
             ON CONFLICT (org_id) DO UPDATE SET
               count = CASE WHEN excluded.second > request_windows.second THEN 1 ELSE request_windows.count + 1 END,
               second = CASE WHEN excluded.second > request_windows.second THEN excluded.second ELSE request_windows.second END
             RETURNING count AS n",
            self.dialect.unix_seconds()
        ))
        .bind(org_id.0)
        .fetch_one(&self.writer)
        .await
        .map_err(err)?;
        row::get(&row, "n")
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_assets(&self, org_id: OrgId) -> Result<Vec<AssetRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {ASSET_COLS} FROM assets a WHERE a.org_id = $1 ORDER BY a.adam_id, a.pricing_param"
        ))
        .bind(org_id.0)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(asset_from_row).collect()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_assignments_page(
        &self,
        org_id: OrgId,
        since: Option<i64>,
        filter: &AssignmentFilter,
        first: i64,
        size: i64,
    ) -> Result<AssignmentPage> {
        let kind = if filter.exclude_inactive_users {
            Kind::Active
        } else {
            Kind::All
        };
        let narrowed = filter.adam_id.is_some()
            || filter.client_user_id.is_some()
            || filter.serial_number.is_some()
            || filter.pricing_param.is_some();
        let mut tx = self
            .reader
            .begin_with(self.dialect.begin_read())
            .await
            .map_err(err)?;
        let since = since.unwrap_or(0);
        let page = if narrowed {
            // A filter on the asset or the target narrows the listing to one asset's or
            // one target's assignments, read by their indexes with OFFSET within them.
            let mut cond = format!("org_id = $1 AND chg > $2{}", kind.sql("assignments"));
            let mut args: Vec<String> = Vec::new();
            if let Some(a) = &filter.adam_id {
                args.push(a.clone());
                cond += &format!(" AND adam_id = ${}", args.len() + 2);
            }
            if let Some(p) = filter.pricing_param {
                args.push(p.as_str().to_string());
                cond += &format!(" AND pricing_param = ${}", args.len() + 2);
            }
            match (&filter.client_user_id, &filter.serial_number) {
                (Some(_), Some(_)) => cond += " AND 1 = 0",
                (Some(c), None) => {
                    args.push(c.clone());
                    cond += &format!(" AND target_kind = 0 AND target = ${}", args.len() + 2);
                }
                (None, Some(sn)) => {
                    args.push(sn.clone());
                    cond += &format!(" AND target_kind = 1 AND target = ${}", args.len() + 2);
                }
                (None, None) => {}
            }
            let count_sql = format!("SELECT COUNT(*) AS n FROM assignments WHERE {cond}");
            let mut q = sqlx::query(&count_sql).bind(org_id.0).bind(since);
            for a in &args {
                q = q.bind(a.as_str());
            }
            let total: i64 = row::get(&q.fetch_one(&mut *tx).await.map_err(err)?, "n")?;
            let mut assignments = Vec::new();
            if first >= 0 && size > 0 && first < total {
                let list_sql = format!(
                    "SELECT {ASSIGNMENT_COLS} FROM assignments a WHERE {cond} ORDER BY chg LIMIT {size} OFFSET {first}"
                );
                let mut q = sqlx::query(&list_sql).bind(org_id.0).bind(since);
                for a in &args {
                    q = q.bind(a.as_str());
                }
                for r in q.fetch_all(&mut *tx).await.map_err(err)? {
                    assignments.push(assignment_from_row(&r)?);
                }
            }
            AssignmentPage { assignments, total }
        } else {
            let before = if since > 0 {
                rank(&mut tx, org_id, AXIS_ASSIGN, kind, since).await?
            } else {
                0
            };
            let total = kind_total(&mut tx, org_id, AXIS_ASSIGN, kind).await? - before;
            let mut assignments = Vec::new();
            if first >= 0 && size > 0 && first < total {
                if let Some(start) =
                    select_nth(&mut tx, org_id, AXIS_ASSIGN, kind, before + first + 1).await?
                {
                    let rows = sqlx::query(&format!(
                        "SELECT {ASSIGNMENT_COLS} FROM assignments a WHERE org_id = $1 AND chg >= $2{} ORDER BY chg LIMIT $3",
                        kind.sql("assignments")
                    ))
                    .bind(org_id.0)
                    .bind(start)
                    .bind(size)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(err)?;
                    for r in &rows {
                        assignments.push(assignment_from_row(r)?);
                    }
                }
            }
            AssignmentPage { assignments, total }
        };
        tx.commit().await.map_err(err)?;
        Ok(page)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(users = client_user_ids.len()))]
    async fn latest_users(
        &self,
        org_id: OrgId,
        client_user_ids: &[&str],
    ) -> Result<Vec<UserRecord>> {
        let mut out = Vec::new();
        for chunk in client_user_ids.chunks(KEYS_PER_QUERY) {
            // The highest `ord` of a clientUserId is its latest record: the active one
            // when there is one (a new record is made only once the old one is retired).
            let sql = format!(
                "SELECT {USER_COLS} FROM users WHERE org_id = $1 AND ord IN (
                   SELECT MAX(ord) FROM users WHERE org_id = $1 AND client_user_id IN ({}) GROUP BY client_user_id)",
                row::list(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(org_id.0);
            for c in chunk {
                q = q.bind(*c);
            }
            let rows = q.fetch_all(&self.reader).await.map_err(err)?;
            out.extend(users_from_rows(&rows)?);
        }
        Ok(out)
    }
}

/// [`OrgTx`] over one SQL transaction, begun with the organisation's row locked.
struct SqlOrgTx {
    tx: Transaction<'static, Any>,
    org: Org,
    dialect: Dialect,
}

impl SqlOrgTx {
    /// Records of this organisation where `col` is one of `keys` (and `extra` holds),
    /// several keys per query.
    async fn users_where_in(
        &mut self,
        col: &str,
        keys: &[&str],
        extra: &str,
    ) -> Result<Vec<UserRecord>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT {USER_COLS} FROM users WHERE org_id = $1 AND {col} IN ({}){extra}",
                row::list(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(self.org.id.0);
            for k in chunk {
                q = q.bind(*k);
            }
            let rows = q.fetch_all(&mut *self.tx).await.map_err(err)?;
            out.extend(users_from_rows(&rows)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl OrgTx for SqlOrgTx {
    fn org(&self) -> &Org {
        &self.org
    }

    #[tracing::instrument(level = "debug", skip_all, fields(event_id = %claim.event_id))]
    async fn lock_event(&mut self, claim: &EventClaim) -> Result<(EventProgress, i64)> {
        let ev = sqlx::query(&format!(
            "SELECT lease_owner, status, progress, num_requested FROM events WHERE id = $1 AND org_id = $2{}",
            self.dialect.for_update()
        ))
        .bind(claim.id)
        .bind(self.org.id.0)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(err)?
        .ok_or(StoreError::LeaseLost)?;
        let lease_owner: Option<String> = row::get(&ev, "lease_owner")?;
        let status = row::parsed(&ev, "status", EventStatus::parse)?;
        if lease_owner.as_deref() != Some(claim.owner.as_str()) || status != EventStatus::Pending {
            return Err(StoreError::LeaseLost);
        }
        let progress: EventProgress = row::json(&ev, "progress")?;
        if progress.cursor != claim.cursor {
            return Err(StoreError::LeaseLost);
        }
        Ok((progress, row::get(&ev, "num_requested")?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(users = client_user_ids.len()))]
    async fn active_users(&mut self, client_user_ids: &[&str]) -> Result<Vec<UserRecord>> {
        // Locked: an invitation acceptance (`UserTx`) writes records without the
        // organisation's lock, and must not be overwritten from a read made before it.
        let extra = format!(" AND status <> 'Retired'{}", self.dialect.for_update());
        self.users_where_in("client_user_id", client_user_ids, &extra)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(hashes = id_hashes.len()))]
    async fn associated_with(&mut self, id_hashes: &[&str]) -> Result<Vec<UserRecord>> {
        // The Apple Accounts stay ours until commit: an acceptance cannot take one meanwhile.
        numbering::lock_accounts(&mut self.tx, self.dialect, self.org.id, id_hashes).await?;
        self.users_where_in("id_hash", id_hashes, " AND status = 'Associated'")
            .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_by_invite_code(&mut self, invite_code: &str) -> Result<Option<UserRecord>> {
        let lock = self.dialect.for_update();
        Ok(self
            .users_where_in("invite_code", &[invite_code], lock)
            .await?
            .pop())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    async fn insert_users(&mut self, users: &[NewUser]) -> Result<()> {
        for chunk in users.chunks(row::rows_per_statement(9, 0)) {
            let sql = format!(
                "INSERT INTO users (org_id, ord, chg, client_user_id, email, managed_apple_id, invite_code, id_hash, status) VALUES {}",
                row::tuples(1, chunk.len(), 9)
            );
            let mut q = sqlx::query(&sql);
            for u in chunk {
                let r = &u.record;
                q = q
                    .bind(self.org.id.0)
                    .bind(r.ord)
                    .bind(r.chg)
                    .bind(&r.client_user_id)
                    .bind(&r.email)
                    .bind(&u.managed_apple_id)
                    .bind(&r.invite_code)
                    .bind(&r.id_hash)
                    .bind(r.status.as_str());
            }
            q.execute(&mut *self.tx).await.map_err(err)?;
        }
        let mut deltas = BlockDeltas::default();
        for u in users {
            let r = &u.record;
            deltas.add(AXIS_ORD, r.ord, r.status, 1);
            deltas.add(AXIS_CHG, r.chg, r.status, 1);
        }
        deltas.write(&mut self.tx, self.org.id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    async fn update_users(&mut self, users: &[UserUpdate]) -> Result<()> {
        // The records as they were, for the counted blocks.
        let mut before = std::collections::HashMap::with_capacity(users.len());
        let ords: Vec<i64> = users.iter().map(|u| u.record.ord).collect();
        for chunk in ords.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT ord, chg, status FROM users WHERE org_id = $1 AND ord IN ({})",
                row::list(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(self.org.id.0);
            for k in chunk {
                q = q.bind(*k);
            }
            for r in q.fetch_all(&mut *self.tx).await.map_err(err)? {
                before.insert(
                    row::get::<i64>(&r, "ord")?,
                    (
                        row::get::<i64>(&r, "chg")?,
                        row::parsed(&r, "status", UserStatus::parse)?,
                    ),
                );
            }
        }
        let mut deltas = BlockDeltas::default();
        for u in users {
            let r = &u.record;
            if let Some((chg, status)) = before.get(&r.ord) {
                deltas.add(AXIS_ORD, r.ord, *status, -1);
                deltas.add(AXIS_CHG, *chg, *status, -1);
                deltas.add(AXIS_ORD, r.ord, r.status, 1);
                deltas.add(AXIS_CHG, r.chg, r.status, 1);
            }
        }
        // One statement per record: the records of a step differ in every column, and a
        // step is at most a notification's worth of users.
        for u in users {
            let r = &u.record;
            sqlx::query(
                "UPDATE users SET chg = $1, email = $2, id_hash = $3, status = $4, managed_apple_id = COALESCE($5, managed_apple_id), renumber = 0 WHERE org_id = $6 AND ord = $7",
            )
            .bind(r.chg)
            .bind(&r.email)
            .bind(&r.id_hash)
            .bind(r.status.as_str())
            .bind(&u.managed_apple_id)
            .bind(self.org.id.0)
            .bind(r.ord)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        }
        deltas.write(&mut self.tx, self.org.id).await
    }

    async fn set_counters(&mut self, user_count: i64, chg: i64) -> Result<()> {
        if (user_count, chg) == (self.org.user_count, self.org.chg) {
            return Ok(());
        }
        sqlx::query("UPDATE orgs SET user_count = $1, chg = $2 WHERE id = $3")
            .bind(user_count)
            .bind(chg)
            .bind(self.org.id.0)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        self.org.user_count = user_count;
        self.org.chg = chg;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(event_id = %claim.event_id, status = status.as_str()))]
    async fn save_event(
        &mut self,
        claim: &EventClaim,
        progress: &EventProgress,
        status: EventStatus,
        now: i64,
        lease_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE events SET progress = $1, num_completed = $2, status = $3, lease_until = $4, finished_at = $5, step_failures = 0 WHERE id = $6",
        )
        .bind(serde_json::to_string(progress).expect("serialisable"))
        .bind(progress.num_completed)
        .bind(status.as_str())
        .bind(now + lease_ms)
        .bind((status != EventStatus::Pending).then_some(now))
        .bind(claim.id)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn enqueue_notifications(
        &mut self,
        kind: &str,
        bodies: &[String],
        now: i64,
    ) -> Result<()> {
        insert_notifications(&mut self.tx, self.org.id, kind, bodies, now).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(keys = keys.len()))]
    async fn assets(&mut self, keys: &[(&str, PricingParam)]) -> Result<Vec<AssetRecord>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(row::rows_per_statement(2, 1)) {
            let sql = format!(
                "WITH k(adam_id, pricing_param) AS (VALUES {})
                 SELECT {ASSET_COLS} FROM k CROSS JOIN assets a
                 WHERE a.org_id = $1 AND a.adam_id = k.adam_id AND a.pricing_param = k.pricing_param",
                row::tuples(2, chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql).bind(self.org.id.0);
            for (adam_id, pricing) in chunk {
                q = q.bind(*adam_id).bind(pricing.as_str());
            }
            let rows = q.fetch_all(&mut *self.tx).await.map_err(err)?;
            for r in &rows {
                out.push(asset_from_row(r)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(assets = assets.len()))]
    async fn put_assets(&mut self, assets: &[AssetRecord], asset_chg: i64) -> Result<()> {
        let now = now_ms();
        for a in assets {
            sqlx::query(
                "INSERT INTO assets (org_id, adam_id, pricing_param, product_type, supported_platforms, device_assignable, revocable, total_count, assigned_count, retired_count, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
                 ON CONFLICT (org_id, adam_id, pricing_param) DO UPDATE SET product_type = excluded.product_type,
                   supported_platforms = excluded.supported_platforms, device_assignable = excluded.device_assignable,
                   revocable = excluded.revocable, total_count = excluded.total_count,
                   assigned_count = excluded.assigned_count, retired_count = excluded.retired_count,
                   updated_at = excluded.updated_at",
            )
            .bind(self.org.id.0)
            .bind(&a.adam_id)
            .bind(a.pricing_param.as_str())
            .bind(a.product_type.as_str())
            .bind(serde_json::to_string(&a.supported_platforms).expect("serialisable"))
            .bind(i64::from(a.device_assignable))
            .bind(i64::from(a.revocable))
            .bind(a.total_count)
            .bind(a.assigned_count)
            .bind(a.retired_count)
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        }
        if asset_chg != self.org.asset_chg {
            sqlx::query("UPDATE orgs SET asset_chg = $1 WHERE id = $2")
                .bind(asset_chg)
                .bind(self.org.id.0)
                .execute(&mut *self.tx)
                .await
                .map_err(err)?;
            self.org.asset_chg = asset_chg;
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(targets = targets.len()))]
    async fn assignments_of(&mut self, targets: &[Target]) -> Result<Vec<AssignmentRecord>> {
        let mut out = Vec::new();
        for chunk in targets.chunks(row::rows_per_statement(2, 1)) {
            let sql = format!(
                "WITH k(target_kind, target) AS (VALUES {})
                 SELECT {ASSIGNMENT_COLS} FROM k CROSS JOIN assignments a
                 WHERE a.org_id = $1 AND a.target_kind = k.target_kind AND a.target = k.target",
                row::tuples(2, chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql).bind(self.org.id.0);
            for t in chunk {
                let (kind, value) = target_cols(t);
                q = q.bind(kind).bind(value);
            }
            for r in q.fetch_all(&mut *self.tx).await.map_err(err)? {
                out.push(assignment_from_row(&r)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(assignments = assignments.len()))]
    async fn insert_assignments(&mut self, assignments: &[AssignmentRecord]) -> Result<()> {
        for chunk in assignments.chunks(row::rows_per_statement(7, 0)) {
            let sql = format!(
                "INSERT INTO assignments (org_id, adam_id, pricing_param, target_kind, target, chg, user_active) VALUES {}",
                row::tuples(1, chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for a in chunk {
                let (kind, value) = target_cols(&a.target);
                q = q
                    .bind(self.org.id.0)
                    .bind(&a.asset.adam_id)
                    .bind(a.asset.pricing_param.as_str())
                    .bind(kind)
                    .bind(value)
                    .bind(a.chg)
                    .bind(i64::from(a.user_active));
            }
            q.execute(&mut *self.tx).await.map_err(err)?;
        }
        let mut deltas = BlockDeltas::default();
        for a in assignments {
            deltas.add_kind(AXIS_ASSIGN, a.chg, a.user_active, 1);
        }
        deltas.write(&mut self.tx, self.org.id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(assignments = assignments.len()))]
    async fn delete_assignments(&mut self, assignments: &[AssignmentRecord]) -> Result<()> {
        // `chg` is unique per organisation: it names the row.
        let chgs: Vec<i64> = assignments.iter().map(|a| a.chg).collect();
        for chunk in chgs.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "DELETE FROM assignments WHERE org_id = $1 AND chg IN ({})",
                row::list(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(self.org.id.0);
            for c in chunk {
                q = q.bind(*c);
            }
            let done = q.execute(&mut *self.tx).await.map_err(err)?;
            if done.rows_affected() != chunk.len() as u64 {
                return Err(StoreError::Conflict(
                    "an assignment to remove is not stored as read".into(),
                ));
            }
        }
        let mut deltas = BlockDeltas::default();
        for a in assignments {
            deltas.add_kind(AXIS_ASSIGN, a.chg, a.user_active, -1);
        }
        deltas.write(&mut self.tx, self.org.id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(assignments = changes.len()))]
    async fn update_assignments(
        &mut self,
        changes: &[(AssignmentRecord, AssignmentRecord)],
    ) -> Result<()> {
        let mut deltas = BlockDeltas::default();
        for (before, after) in changes {
            let done = sqlx::query(
                "UPDATE assignments SET chg = $1, user_active = $2 WHERE org_id = $3 AND chg = $4",
            )
            .bind(after.chg)
            .bind(i64::from(after.user_active))
            .bind(self.org.id.0)
            .bind(before.chg)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict(
                    "an assignment to change is not stored as read".into(),
                ));
            }
            deltas.add_kind(AXIS_ASSIGN, before.chg, before.user_active, -1);
            deltas.add_kind(AXIS_ASSIGN, after.chg, after.user_active, 1);
        }
        deltas.write(&mut self.tx, self.org.id).await
    }

    async fn set_assignment_chg(&mut self, assign_chg: i64) -> Result<()> {
        if assign_chg == self.org.assign_chg {
            return Ok(());
        }
        sqlx::query("UPDATE orgs SET assign_chg = $1 WHERE id = $2")
            .bind(assign_chg)
            .bind(self.org.id.0)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        self.org.assign_chg = assign_chg;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(err)
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.tx.rollback().await.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_org_columns_are_the_org_columns() {
        let prefixed: Vec<String> = ORG_COLS.split(", ").map(|c| format!("o.{c}")).collect();
        assert_eq!(ORG_COLS_O, prefixed.join(", "));
    }
}
