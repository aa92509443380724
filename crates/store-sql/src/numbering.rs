//! Changes numbered after their commit ([`UserTx`]): on PostgreSQL an invitation
//! acceptance locks only its record's row and its Apple Account (an advisory lock), commits,
//! and then numbers its change under the organisation's row lock together with every other
//! change waiting, so that acceptances share commits instead of queueing behind each
//! other's. A marked record (`users.renumber = 1`, migration 0013) keeps its old `chg` until
//! it is numbered; since numbers are only given under the organisation's lock, a reader that
//! sees version *v* still sees every change numbered up to *v*. SQLite's one writer numbers
//! at once, as an [`OrgTx`] does.

use crate::{err, row, BlockDeltas, Dialect, SqlOrgTx, SqlStore, AXIS_CHG, AXIS_ORD};
use async_trait::async_trait;
use cloudvpp_abwire::UserStatus;
use cloudvpp_store::{Org, OrgId, OrgTx, Result, StoreError, UserRecord, UserTx, UserUpdate};

/// Records numbered per transaction: one commit for many acceptances, a short lock.
const BATCH: i64 = 1000;

/// The advisory lock of an Apple Account within an organisation: acceptances and event
/// steps that associate it take it before reading who holds it.
pub(crate) fn account_lock_key(org_id: OrgId, id_hash: &str) -> String {
    format!("{}:{id_hash}", org_id.0)
}

/// Takes the advisory locks of these Apple Accounts for the transaction (PostgreSQL; SQLite's
/// one writer excludes the others already). The order does not matter: a transaction that
/// takes several holds the organisation's lock, so it never waits for another such one.
pub(crate) async fn lock_accounts(
    tx: &mut sqlx::AnyConnection,
    dialect: Dialect,
    org_id: OrgId,
    id_hashes: &[&str],
) -> Result<()> {
    if dialect != Dialect::Postgres || id_hashes.is_empty() {
        return Ok(());
    }
    for chunk in id_hashes.chunks(1000) {
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM (VALUES {}) AS v(k)",
            (1..=chunk.len())
                .map(|i| format!("(${i})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut q = sqlx::query(&sql);
        for h in chunk {
            q = q.bind(account_lock_key(org_id, h));
        }
        // Run, not fetched: the rows are `void`.
        q.execute(&mut *tx).await.map_err(err)?;
    }
    Ok(())
}

/// See [`UserTx`].
pub(crate) struct SqlUserTx {
    inner: SqlOrgTx,
    store: SqlStore,
    id_hash: String,
    /// Whether the change is numbered after the commit (PostgreSQL).
    deferred: bool,
    changed: bool,
}

impl SqlStore {
    pub(crate) async fn begin_user_tx(&self, org_id: OrgId, id_hash: &str) -> Result<SqlUserTx> {
        let deferred = self.dialect == Dialect::Postgres;
        let mut tx = self.begin_write().await?;
        // Locked only where numbers are taken now (SQLite's one writer holds it anyway).
        let org = self.org_in(&mut tx, org_id, !deferred).await?;
        Ok(SqlUserTx {
            inner: SqlOrgTx {
                tx,
                org,
                dialect: self.dialect,
            },
            store: self.clone(),
            id_hash: id_hash.to_string(),
            deferred,
            changed: false,
        })
    }

    /// Numbers the marked records of one organisation, [`BATCH`] a transaction, under its
    /// row lock (the one every numbering writer takes); returns how many.
    pub(crate) async fn number_org_changes(&self, org_id: OrgId) -> Result<u64> {
        let mut total = 0u64;
        loop {
            // Most callers find their change numbered already by another's batch: a plain
            // read spares them the lock.
            let waiting =
                sqlx::query("SELECT 1 AS x FROM users WHERE org_id = $1 AND renumber = 1 LIMIT 1")
                    .bind(org_id.0)
                    .fetch_optional(&self.writer)
                    .await
                    .map_err(err)?;
            if waiting.is_none() {
                return Ok(total);
            }
            let mut tx = self.begin_write().await?;
            let org = self.org_in(&mut tx, org_id, true).await?;
            let rows = sqlx::query(&format!(
                "SELECT ord, chg, status FROM users WHERE org_id = $1 AND renumber = 1 ORDER BY ord LIMIT {BATCH}{}",
                self.dialect.for_update()
            ))
            .bind(org_id.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            if rows.is_empty() {
                tx.rollback().await.map_err(err)?;
                return Ok(total);
            }
            let mut chg = org.chg;
            let mut deltas = BlockDeltas::default();
            let mut numbered: Vec<(i64, i64)> = Vec::with_capacity(rows.len());
            for r in &rows {
                let ord: i64 = row::get(r, "ord")?;
                let old: i64 = row::get(r, "chg")?;
                let status = row::parsed(r, "status", UserStatus::parse)?;
                chg += 1;
                deltas.add(AXIS_CHG, old, status, -1);
                deltas.add(AXIS_CHG, chg, status, 1);
                numbered.push((ord, chg));
            }
            for chunk in numbered.chunks(row::rows_per_statement(2, 1)) {
                // A CTE with named columns: both backends read it (SQLite has no
                // `VALUES ... AS v(a, b)`).
                let sql = format!(
                    "WITH v(ord, chg) AS (VALUES {})
                     UPDATE users SET chg = (SELECT v.chg FROM v WHERE v.ord = users.ord), renumber = 0
                     WHERE org_id = $1 AND ord IN (SELECT ord FROM v)",
                    row::tuples(2, chunk.len(), 2)
                );
                let mut q = sqlx::query(&sql).bind(org_id.0);
                for (ord, chg) in chunk {
                    q = q.bind(*ord).bind(*chg);
                }
                q.execute(&mut *tx).await.map_err(err)?;
            }
            deltas.write(&mut tx, org_id).await?;
            sqlx::query("UPDATE orgs SET chg = $1 WHERE id = $2")
                .bind(chg)
                .bind(org_id.0)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            total += numbered.len() as u64;
            if (rows.len() as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// [`cloudvpp_store::AppsBooksStore::number_changes`].
    pub(crate) async fn number_all_changes(&self) -> Result<u64> {
        let orgs = sqlx::query("SELECT DISTINCT org_id FROM users WHERE renumber = 1")
            .fetch_all(&self.writer)
            .await
            .map_err(err)?;
        let mut total = 0;
        for r in orgs {
            total += self
                .number_org_changes(OrgId(row::get(&r, "org_id")?))
                .await?;
        }
        Ok(total)
    }
}

#[async_trait]
impl UserTx for SqlUserTx {
    fn org(&self) -> &Org {
        &self.inner.org
    }

    async fn user_by_invite_code(&mut self, invite_code: &str) -> Result<Option<UserRecord>> {
        let lock = self.inner.dialect.for_update();
        Ok(self
            .inner
            .users_where_in("invite_code", &[invite_code], lock)
            .await?
            .pop())
    }

    async fn associated_with(&mut self) -> Result<Vec<UserRecord>> {
        let (org_id, dialect) = (self.inner.org.id, self.inner.dialect);
        lock_accounts(&mut self.inner.tx, dialect, org_id, &[&self.id_hash]).await?;
        let hash = self.id_hash.clone();
        self.inner
            .users_where_in("id_hash", &[&hash], " AND status = 'Associated'")
            .await
    }

    async fn change_user(&mut self, update: &UserUpdate) -> Result<()> {
        self.changed = true;
        if !self.deferred {
            // One writer: numbered now, as an event step numbers.
            let mut update = update.clone();
            let chg = self.inner.org.chg + 1;
            update.record.chg = chg;
            self.inner.update_users(&[update]).await?;
            let user_count = self.inner.org.user_count;
            return self.inner.set_counters(user_count, chg).await;
        }
        let r = &update.record;
        let org_id = self.inner.org.id;
        let before = sqlx::query("SELECT chg, status FROM users WHERE org_id = $1 AND ord = $2")
            .bind(org_id.0)
            .bind(r.ord)
            .fetch_optional(&mut *self.inner.tx)
            .await
            .map_err(err)?
            .ok_or_else(|| StoreError::other(format!("no record {} to change", r.ord)))?;
        let old_chg: i64 = row::get(&before, "chg")?;
        let old_status = row::parsed(&before, "status", UserStatus::parse)?;
        sqlx::query(
            "UPDATE users SET email = $1, id_hash = $2, status = $3, managed_apple_id = COALESCE($4, managed_apple_id), renumber = 1
             WHERE org_id = $5 AND ord = $6",
        )
        .bind(&r.email)
        .bind(&r.id_hash)
        .bind(r.status.as_str())
        .bind(&update.managed_apple_id)
        .bind(org_id.0)
        .bind(r.ord)
        .execute(&mut *self.inner.tx)
        .await
        .map_err(err)?;
        // The record stays at its old number until numbered: only a change of kind
        // (active or retired) moves the counts, there.
        let mut deltas = BlockDeltas::default();
        deltas.add(AXIS_ORD, r.ord, old_status, -1);
        deltas.add(AXIS_ORD, r.ord, r.status, 1);
        deltas.add(AXIS_CHG, old_chg, old_status, -1);
        deltas.add(AXIS_CHG, old_chg, r.status, 1);
        deltas.write(&mut self.inner.tx, org_id).await
    }

    async fn enqueue_notifications(
        &mut self,
        kind: &str,
        bodies: &[String],
        now: i64,
    ) -> Result<()> {
        self.inner.enqueue_notifications(kind, bodies, now).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let SqlUserTx {
            inner,
            store,
            deferred,
            changed,
            ..
        } = *self;
        let org_id = inner.org.id;
        inner.tx.commit().await.map_err(err)?;
        if deferred && changed {
            // The change is committed: a failure to number it now is not the writer's
            // failure, and the event worker's next idle round numbers it.
            if let Err(e) = store.number_org_changes(org_id).await {
                tracing::warn!(error = %e, org = %org_id, "numbering an accepted change: left to the event worker");
            }
        }
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.tx.rollback().await.map_err(err)
    }
}
