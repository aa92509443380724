//! SQL implementation of [`EngineStore`]. It reads and writes the engine's tables only:
//! what the MDM knows (enrollments, command answers) the engine asks the MDM service for.
//!
//! Rows are read by column name into typed values ([`crate::row`]): an invitation state or
//! mirror status that is not one of ours is [`cloudvpp_store::StoreError::Corrupt`].

use crate::row;
use crate::{err, Dialect, SqlStore};
use async_trait::async_trait;
use cloudvpp_abwire::assets::PricingParam;
use cloudvpp_abwire::{ResponseUser, UserStatus};
use cloudvpp_store::engine::{
    AppleFailure, Assignment, AssignmentFilter, AssignmentId, AssignmentState, EngineStore,
    Invitation, InvitationFilter, InvitationId, InvitationState, Location, LocationApp, LocationId,
    MirrorUser, NewLocation,
};
use cloudvpp_store::mdm::{CommandUuid, EnrollmentId};
use cloudvpp_store::{Result, StoreError};
use sqlx::any::AnyRow;
use std::collections::HashMap;

const LOC_COLS: &str = "id, name, stoken, base_url, uid, notify_token, version_id, expires_at_secs, conflict, last_full_sync_at, last_sync_at";

/// A literal list of location IDs for `IN (...)`: integers only, so nothing to escape.
fn id_list(ids: &[LocationId]) -> String {
    ids.iter()
        .map(|id| id.0.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn location_from_row(r: &AnyRow) -> Result<Location> {
    Ok(Location {
        id: LocationId(row::get(r, "id")?),
        name: row::get(r, "name")?,
        stoken: row::get(r, "stoken")?,
        base_url: row::get(r, "base_url")?,
        uid: row::get(r, "uid")?,
        notify_token_digest: row::get(r, "notify_token")?,
        version_id: row::get(r, "version_id")?,
        expires_at: row::get(r, "expires_at_secs")?,
        conflict: row::flag(r, "conflict")?,
        last_full_sync_at: row::get(r, "last_full_sync_at")?,
        last_sync_at: row::get(r, "last_sync_at")?,
    })
}

const INV_COLS: &str = "i.id, i.location_id, i.client_user_id, i.email, i.enrollment_id, i.channel, i.state, i.reason, i.invite_code, \
     i.invitation_url, i.event_id, i.command_uuid, i.invitation_result, i.attempts, i.created_at, i.updated_at, i.next_action_at";

fn invitation_from_row(r: &AnyRow) -> Result<Invitation> {
    let id = |col| -> Result<Option<String>> { row::get(r, col) };
    Ok(Invitation {
        id: InvitationId::new(row::get::<String>(r, "id")?),
        location_id: LocationId(row::get(r, "location_id")?),
        client_user_id: row::get(r, "client_user_id")?,
        email: row::get(r, "email")?,
        enrollment_id: id("enrollment_id")?.map(EnrollmentId::new),
        channel: id("channel")?.map(EnrollmentId::new),
        state: row::parsed(r, "state", InvitationState::parse)?,
        reason: row::get(r, "reason")?,
        invite_code: row::get(r, "invite_code")?,
        invitation_url: row::get(r, "invitation_url")?,
        event_id: row::get(r, "event_id")?,
        command_uuid: id("command_uuid")?.map(CommandUuid::new),
        invitation_result: row::get(r, "invitation_result")?,
        attempts: row::get(r, "attempts")?,
        created_at: row::get(r, "created_at")?,
        updated_at: row::get(r, "updated_at")?,
        next_action_at: row::get(r, "next_action_at")?,
    })
}

/// The mirror's columns read beside an invitation (`m`), named apart from its own.
const JOINED_MIRROR_COLS: &str =
    "m.status AS m_status, m.invite_code AS m_invite_code, m.id_hash AS m_id_hash, m.email AS m_email";

/// An invitation and its person's mirror record, from a row that joined them ([`JOINED_MIRROR_COLS`]).
fn invitation_with_mirror(r: &AnyRow) -> Result<(Invitation, MirrorUser)> {
    let inv = invitation_from_row(r)?;
    let m = MirrorUser {
        client_user_id: inv.client_user_id.clone(),
        status: row::parsed(r, "m_status", UserStatus::parse)?,
        invite_code: row::get(r, "m_invite_code")?,
        id_hash: row::get(r, "m_id_hash")?,
        email: row::get(r, "m_email")?,
    };
    Ok((inv, m))
}

const MIRROR_COLS: &str = "m.client_user_id, m.status, m.invite_code, m.id_hash, m.email";

fn mirror_from_row(r: &AnyRow) -> Result<MirrorUser> {
    Ok(MirrorUser {
        client_user_id: row::get(r, "client_user_id")?,
        status: row::parsed(r, "status", UserStatus::parse)?,
        invite_code: row::get(r, "invite_code")?,
        id_hash: row::get(r, "id_hash")?,
        email: row::get(r, "email")?,
    })
}

/// The SQL list of terminal states, for `NOT IN (...)`.
fn terminal_states() -> String {
    InvitationState::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Invitation columns, in the order [`bind_invitation`] binds them.
const INV_WRITE_COLS: &str = "id, location_id, client_user_id, email, enrollment_id, channel, state, reason, invite_code, \
     invitation_url, event_id, command_uuid, invitation_result, attempts, created_at, updated_at, next_action_at";
const INV_WRITE_N: usize = 17;

fn bind_invitation<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    i: &'q Invitation,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(i.id.as_str())
        .bind(i.location_id.0)
        .bind(&i.client_user_id)
        .bind(&i.email)
        .bind(i.enrollment_id.as_ref().map(EnrollmentId::as_str))
        .bind(i.channel.as_ref().map(EnrollmentId::as_str))
        .bind(i.state.as_str())
        .bind(&i.reason)
        .bind(&i.invite_code)
        .bind(&i.invitation_url)
        .bind(&i.event_id)
        .bind(i.command_uuid.as_ref().map(CommandUuid::as_str))
        .bind(&i.invitation_result)
        .bind(i.attempts)
        .bind(i.created_at)
        .bind(i.updated_at)
        .bind(i.next_action_at)
}

async fn update_one(conn: &mut sqlx::AnyConnection, i: &Invitation) -> Result<()> {
    let q = sqlx::query(
        "UPDATE engine_invitations SET id = $1, location_id = $2, client_user_id = $3, email = $4, enrollment_id = $5,
           channel = $6, state = $7, reason = $8, invite_code = $9, invitation_url = $10, event_id = $11,
           command_uuid = $12, invitation_result = $13, attempts = $14, created_at = $15, updated_at = $16,
           next_action_at = $17 WHERE id = $1",
    );
    bind_invitation(q, i).execute(conn).await.map_err(err)?;
    Ok(())
}

const APP_COLS: &str = "location_id, adam_id, pricing_param, created_at";

fn app_from_row(r: &AnyRow) -> Result<LocationApp> {
    Ok(LocationApp {
        location_id: LocationId(row::get(r, "location_id")?),
        adam_id: row::get(r, "adam_id")?,
        pricing_param: row::parsed(r, "pricing_param", PricingParam::parse)?,
        created_at: row::get(r, "created_at")?,
    })
}

/// Assignment columns, in the order [`bind_assignment`] binds them.
const ASG_COLS: &str =
    "id, location_id, client_user_id, adam_id, pricing_param, state, error_number, error_message, \
     note, event_id, attempts, version, created_at, updated_at, next_action_at";
const ASG_N: usize = 15;

/// The states an assignment is worked on in (the due index's predicate, written the same).
const OPEN_ASSIGNMENT_STATES: &str = "('pending', 'requested', 'waiting')";

fn assignment_from_row(r: &AnyRow) -> Result<Assignment> {
    let number: Option<i64> = row::get(r, "error_number")?;
    let message: Option<String> = row::get(r, "error_message")?;
    let error = match (number, message) {
        (None, None) => None,
        (Some(n), Some(message)) => Some(AppleFailure {
            number: u32::try_from(n).map_err(|_| {
                StoreError::corrupt("error_number", format!("{n} is not an error number"))
            })?,
            message,
        }),
        _ => {
            return Err(StoreError::corrupt(
                "error_number",
                "an error number without its message, or the reverse",
            ))
        }
    };
    Ok(Assignment {
        id: AssignmentId::new(row::get::<String>(r, "id")?),
        location_id: LocationId(row::get(r, "location_id")?),
        client_user_id: row::get(r, "client_user_id")?,
        adam_id: row::get(r, "adam_id")?,
        pricing_param: row::parsed(r, "pricing_param", PricingParam::parse)?,
        state: row::parsed(r, "state", AssignmentState::parse)?,
        error,
        note: row::get(r, "note")?,
        event_id: row::get(r, "event_id")?,
        attempts: row::get(r, "attempts")?,
        version: row::get(r, "version")?,
        created_at: row::get(r, "created_at")?,
        updated_at: row::get(r, "updated_at")?,
        next_action_at: row::get(r, "next_action_at")?,
    })
}

fn bind_assignment<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    a: &'q Assignment,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(a.id.as_str())
        .bind(a.location_id.0)
        .bind(&a.client_user_id)
        .bind(&a.adam_id)
        .bind(a.pricing_param.as_str())
        .bind(a.state.as_str())
        .bind(a.error.as_ref().map(|e| i64::from(e.number)))
        .bind(a.error.as_ref().map(|e| e.message.as_str()))
        .bind(&a.note)
        .bind(&a.event_id)
        .bind(a.attempts)
        .bind(a.version)
        .bind(a.created_at)
        .bind(a.updated_at)
        .bind(a.next_action_at)
}

/// What an assignment's writers may change, bound from `$1`; `$9` is its ID.
const ASG_SET: &str =
    "state = $1, error_number = $2, error_message = $3, note = $4, event_id = $5, attempts = $6, \
     pricing_param = $7, updated_at = $8, next_action_at = $10, version = version + 1";

fn bind_assignment_change<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    a: &'q Assignment,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(a.state.as_str())
        .bind(a.error.as_ref().map(|e| i64::from(e.number)))
        .bind(a.error.as_ref().map(|e| e.message.as_str()))
        .bind(&a.note)
        .bind(&a.event_id)
        .bind(a.attempts)
        .bind(a.pricing_param.as_str())
        .bind(a.updated_at)
        .bind(a.id.as_str())
        .bind(a.next_action_at)
}

/// The `WHERE` clause of an invitation listing (`1 = 1` and one condition per filter set)
/// with `$n` placeholders from `$1`, and the number of parameters it takes; bind them with
/// [`bind_filter`].
fn filter_sql(f: &InvitationFilter) -> (String, usize) {
    let mut sql = String::from("1 = 1");
    let mut n = 0;
    for (set, col) in [
        (f.state.is_some(), "i.state"),
        (f.location_id.is_some(), "i.location_id"),
        (f.client_user_id.is_some(), "i.client_user_id"),
    ] {
        if set {
            n += 1;
            sql.push_str(&format!(" AND {col} = ${n}"));
        }
    }
    if f.updated_since.is_some() {
        n += 1;
        sql.push_str(&format!(" AND i.updated_at >= ${n}"));
    }
    if f.search.is_some() {
        n += 2;
        sql.push_str(&format!(
            " AND (LOWER(i.client_user_id) LIKE ${} ESCAPE '\\' OR LOWER(COALESCE(i.email, '')) LIKE ${n} ESCAPE '\\')",
            n - 1
        ));
    }
    (sql, n)
}

/// `%text%` for LIKE, lower case, with LIKE's own characters taken literally.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn bind_filter<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    f: &'q InvitationFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    if let Some(s) = f.state {
        q = q.bind(s.as_str());
    }
    if let Some(l) = f.location_id {
        q = q.bind(l.0);
    }
    if let Some(c) = &f.client_user_id {
        q = q.bind(c);
    }
    if let Some(t) = f.updated_since {
        q = q.bind(t);
    }
    if let Some(text) = &f.search {
        let pattern = contains_pattern(text);
        q = q.bind(pattern.clone()).bind(pattern);
    }
    q
}

/// The key of the PostgreSQL advisory lock that serialises adding one organisation.
fn location_lock_key(uid: &str) -> i64 {
    let digest = cloudvpp_store::secret::digest(&format!("engine_locations uid {uid}"));
    let hex = digest.trim_start_matches(cloudvpp_store::secret::PREFIX);
    u64::from_str_radix(&hex[..16], 16).map_or(0, |k| k as i64)
}

#[async_trait]
impl EngineStore for SqlStore {
    // The sToken and the notification secret are never recorded.
    #[tracing::instrument(skip(self, new), fields(name = new.name), level = "debug")]
    async fn add_location_once(
        &self,
        new: &NewLocation<'_>,
        uid: &str,
    ) -> Result<(Location, bool)> {
        // The table has no unique uId to refuse a second row, so the check and the insert
        // are one transaction that excludes a concurrent one: SQLite's single writer
        // (BEGIN IMMEDIATE), PostgreSQL's advisory lock on the uId until commit.
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(location_lock_key(uid))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let existing = sqlx::query(&format!(
            "SELECT {LOC_COLS} FROM engine_locations WHERE uid = $1 OR stoken = $2 ORDER BY id LIMIT 1"
        ))
        .bind(uid)
        .bind(new.stoken)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        if let Some(row) = existing {
            let loc = location_from_row(&row)?;
            tx.rollback().await.map_err(err)?;
            return Ok((loc, false));
        }
        let row = sqlx::query(&format!(
            "INSERT INTO engine_locations (name, stoken, base_url, notify_token, expires_at_secs, uid, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {LOC_COLS}"
        ))
        .bind(new.name)
        .bind(new.stoken)
        .bind(new.base_url)
        .bind(cloudvpp_store::secret::digest(new.notify_token))
        .bind(new.expires_at)
        .bind(uid)
        .bind(crate::now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let loc = location_from_row(&row)?;
        tx.commit().await.map_err(err)?;
        Ok((loc, true))
    }

    #[tracing::instrument(skip(self, new), fields(name = new.name), level = "debug")]
    async fn replace_location_token(&self, id: LocationId, new: &NewLocation<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE engine_locations SET name = $1, stoken = $2, base_url = $3, notify_token = $4,
               expires_at_secs = $5 WHERE id = $6",
        )
        .bind(new.name)
        .bind(new.stoken)
        .bind(new.base_url)
        .bind(cloudvpp_store::secret::digest(new.notify_token))
        .bind(new.expires_at)
        .bind(id.0)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    // The sToken and the notification secret are never recorded.
    #[tracing::instrument(skip(self, stoken, notify_token), level = "debug")]
    async fn add_location(
        &self,
        name: &str,
        stoken: &str,
        base_url: &str,
        notify_token: &str,
        expires_at: Option<i64>,
    ) -> Result<Location> {
        let now = crate::now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO engine_locations (name, stoken, base_url, notify_token, expires_at_secs, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {LOC_COLS}"
        ))
        .bind(name)
        .bind(stoken)
        .bind(base_url)
        .bind(cloudvpp_store::secret::digest(notify_token))
        .bind(expires_at)
        .bind(now)
        .fetch_one(&self.writer)
        .await
        .map_err(err)?;
        location_from_row(&row)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn locations(&self) -> Result<Vec<Location>> {
        let rows = sqlx::query(&format!(
            "SELECT {LOC_COLS} FROM engine_locations ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(location_from_row).collect()
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn location(&self, id: LocationId) -> Result<Option<Location>> {
        let row = sqlx::query(&format!(
            "SELECT {LOC_COLS} FROM engine_locations WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.as_ref().map(location_from_row).transpose()
    }

    #[tracing::instrument(skip(self, version_id), level = "debug")]
    async fn location_synced(
        &self,
        id: LocationId,
        version_id: &str,
        full: bool,
        uid: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE engine_locations SET version_id = $1, last_sync_at = $2, uid = COALESCE($3, uid),
               last_full_sync_at = CASE WHEN $4 THEN $5 ELSE last_full_sync_at END WHERE id = $6",
        )
        .bind(version_id)
        .bind(now)
        .bind(uid)
        .bind(full)
        .bind(now)
        .bind(id.0)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn reset_location_version(&self, id: LocationId) -> Result<()> {
        sqlx::query("UPDATE engine_locations SET version_id = NULL WHERE id = $1")
            .bind(id.0)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn set_location_conflict(&self, id: LocationId, conflict: bool) -> Result<()> {
        sqlx::query("UPDATE engine_locations SET conflict = $1 WHERE id = $2")
            .bind(conflict as i64)
            .bind(id.0)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self, users), fields(users = users.len()), level = "debug")]
    async fn upsert_mirror(
        &self,
        location_id: LocationId,
        users: &[ResponseUser],
        now: i64,
    ) -> Result<()> {
        // Several records can share a clientUserId (retired ones plus at most one active):
        // within one batch the active record wins.
        let mut best: HashMap<&str, &ResponseUser> = HashMap::new();
        for u in users {
            let active =
                |x: &ResponseUser| !matches!(x.status, UserStatus::Retired | UserStatus::Deleted);
            match best.get(u.client_user_id.as_str()) {
                Some(prev) if active(prev) && !active(u) => {}
                _ => {
                    best.insert(&u.client_user_id, u);
                }
            }
        }
        let mut best: Vec<&ResponseUser> = best.into_values().collect();
        best.sort_by(|a, b| a.client_user_id.cmp(&b.client_user_id));
        let mut tx = self.begin_write().await?;
        // One multi-row upsert per chunk (each clientUserId once per statement, as
        // PostgreSQL requires of ON CONFLICT DO UPDATE).
        for chunk in best.chunks(row::rows_per_statement(5, 2)) {
            let values = (0..chunk.len())
                .map(|i| {
                    let n = 3 + i * 5;
                    format!(
                        "($1, ${n}, ${}, ${}, ${}, ${}, $2)",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO engine_mirror (location_id, client_user_id, status, invite_code, id_hash, email, updated_at)
                 VALUES {values}
                 ON CONFLICT(location_id, client_user_id) DO UPDATE SET status = excluded.status,
                   invite_code = CASE WHEN excluded.status = 'Retired' THEN engine_mirror.invite_code ELSE excluded.invite_code END,
                   id_hash = COALESCE(excluded.id_hash, CASE WHEN excluded.status = 'Retired' THEN engine_mirror.id_hash END),
                   email = COALESCE(excluded.email, engine_mirror.email), updated_at = excluded.updated_at"
            );
            let mut q = sqlx::query(&sql).bind(location_id.0).bind(now);
            for u in chunk {
                let status = match u.status {
                    UserStatus::Deleted => UserStatus::Retired,
                    s => s,
                };
                q = q
                    .bind(&u.client_user_id)
                    .bind(status.as_str())
                    .bind(&u.invite_code)
                    .bind(&u.id_hash)
                    .bind(&u.email);
            }
            q.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    #[tracing::instrument(skip(self, client_user_ids), fields(people = client_user_ids.len()), level = "debug")]
    async fn mirror_users(
        &self,
        location_id: LocationId,
        client_user_ids: &[String],
    ) -> Result<Vec<MirrorUser>> {
        let mut out = Vec::with_capacity(client_user_ids.len());
        for chunk in client_user_ids.chunks(row::rows_per_statement(1, 1)) {
            let sql = format!(
                "SELECT {MIRROR_COLS} FROM engine_mirror m WHERE m.location_id = $1 AND m.client_user_id IN ({})",
                row::list(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(location_id.0);
            for c in chunk {
                q = q.bind(c);
            }
            for r in q.fetch_all(&self.reader).await.map_err(err)? {
                out.push(mirror_from_row(&r)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn mirror_count(&self, location_id: LocationId) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM engine_mirror WHERE location_id = $1")
            .bind(location_id.0)
            .fetch_one(&self.reader)
            .await
            .map_err(err)?;
        row::get(&row, "n")
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn notification_first_seen(&self, notification_id: &str, now: i64) -> Result<bool> {
        let r = sqlx::query("INSERT INTO engine_notifications_seen (notification_id, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(notification_id)
            .bind(now)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(r.rows_affected() == 1)
    }

    #[tracing::instrument(skip(self, invitations), fields(invitations = invitations.len()), level = "debug")]
    async fn create_invitations(&self, invitations: &[Invitation]) -> Result<()> {
        if invitations.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for chunk in invitations.chunks(row::rows_per_statement(INV_WRITE_N, 0)) {
            let sql = format!(
                "INSERT INTO engine_invitations ({INV_WRITE_COLS}) VALUES {}",
                row::tuples(1, chunk.len(), INV_WRITE_N)
            );
            let mut q = sqlx::query(&sql);
            for i in chunk {
                q = bind_invitation(q, i);
            }
            q.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    #[tracing::instrument(skip(self, id), fields(id = %id), level = "debug")]
    async fn invitation(&self, id: &InvitationId) -> Result<Option<Invitation>> {
        let row = sqlx::query(&format!(
            "SELECT {INV_COLS} FROM engine_invitations i WHERE i.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.as_ref().map(invitation_from_row).transpose()
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn invitations(&self, f: &InvitationFilter) -> Result<Vec<Invitation>> {
        let (cond, n) = filter_sql(f);
        let order = if f.updated_since.is_some() {
            "i.updated_at, i.id"
        } else {
            "i.created_at DESC, i.id"
        };
        let sql = format!(
            "SELECT {INV_COLS} FROM engine_invitations i WHERE {cond} ORDER BY {order} LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let rows = bind_filter(sqlx::query(&sql), f)
            .bind(f.limit.unwrap_or(1000))
            .bind(f.offset.unwrap_or(0).max(0))
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        rows.iter().map(invitation_from_row).collect()
    }

    #[tracing::instrument(skip(self, people), fields(people = people.len()), level = "debug")]
    async fn invitations_of(&self, people: &[(LocationId, String)]) -> Result<Vec<Invitation>> {
        let mut out = Vec::new();
        for chunk in people.chunks(row::rows_per_statement(2, 0)) {
            let sql = format!(
                // As in open_invitations: the keys drive the join.
                "WITH k(location_id, client_user_id) AS (VALUES {})
                 SELECT {INV_COLS} FROM k CROSS JOIN engine_invitations i
                 WHERE i.location_id = k.location_id AND i.client_user_id = k.client_user_id",
                row::tuples(1, chunk.len(), 2),
            );
            let mut q = sqlx::query(&sql);
            for (loc, cuid) in chunk {
                q = q.bind(loc.0).bind(cuid);
            }
            for r in q.fetch_all(&self.reader).await.map_err(err)? {
                out.push(invitation_from_row(&r)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn invitation_counts_matching(
        &self,
        f: &InvitationFilter,
    ) -> Result<Vec<(InvitationState, i64)>> {
        let (cond, _) = filter_sql(f);
        let sql = format!(
            "SELECT i.state AS state, COUNT(*) AS n FROM engine_invitations i WHERE {cond}
             GROUP BY i.state ORDER BY i.state"
        );
        let rows = bind_filter(sqlx::query(&sql), f)
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    row::parsed(r, "state", InvitationState::parse)?,
                    row::get(r, "n")?,
                ))
            })
            .collect()
    }

    #[tracing::instrument(skip(self, people), fields(people = people.len()), level = "debug")]
    async fn open_invitations(&self, people: &[(LocationId, String)]) -> Result<Vec<Invitation>> {
        let mut out = Vec::new();
        for chunk in people.chunks(row::rows_per_statement(2, 0)) {
            let sql = format!(
                // The keys drive a join: as a row-value `IN (VALUES ...)`, SQLite scans
                // the whole table for every request.
                "WITH k(location_id, client_user_id) AS (VALUES {})
                 SELECT {INV_COLS} FROM k CROSS JOIN engine_invitations i
                 WHERE i.location_id = k.location_id AND i.client_user_id = k.client_user_id
                   AND i.state NOT IN ({})",
                row::tuples(1, chunk.len(), 2),
                terminal_states()
            );
            let mut q = sqlx::query(&sql);
            for (loc, cuid) in chunk {
                q = q.bind(loc.0).bind(cuid);
            }
            for r in q.fetch_all(&self.reader).await.map_err(err)? {
                out.push(invitation_from_row(&r)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn invitation_counts(&self) -> Result<Vec<(InvitationState, i64)>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM engine_invitations GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    row::parsed(r, "state", InvitationState::parse)?,
                    row::get(r, "n")?,
                ))
            })
            .collect()
    }

    #[tracing::instrument(skip(self, i), fields(id = %i.id, state = %i.state), level = "debug")]
    async fn update_invitation(&self, i: &Invitation) -> Result<()> {
        let mut conn = self.writer.acquire().await.map_err(err)?;
        update_one(&mut conn, i).await
    }

    #[tracing::instrument(skip(self, invitations), fields(invitations = invitations.len()), level = "debug")]
    async fn update_invitations(&self, invitations: &[Invitation]) -> Result<()> {
        if invitations.is_empty() {
            return Ok(());
        }
        // One transaction: one commit (one fsync) for the whole batch. Each row is its own
        // statement, prepared once and reused.
        let mut tx = self.begin_write().await?;
        for i in invitations {
            update_one(&mut tx, i).await?;
        }
        tx.commit().await.map_err(err)
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn due_invitations(
        &self,
        location_ids: &[LocationId],
        now: i64,
        limit: i64,
    ) -> Result<Vec<Invitation>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {INV_COLS} FROM engine_invitations i WHERE i.state NOT IN ({}) AND i.next_action_at <= $1
               AND i.location_id IN ({})
             ORDER BY i.next_action_at LIMIT $2",
            terminal_states(),
            id_list(location_ids)
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(invitation_from_row).collect()
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn queued_invitations(
        &self,
        location_ids: &[LocationId],
        after: Option<&InvitationId>,
        limit: i64,
    ) -> Result<Vec<Invitation>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {INV_COLS} FROM engine_invitations i WHERE i.state = $1 AND i.location_id IN ({})
               AND i.id > $2
             ORDER BY i.id LIMIT $3",
            id_list(location_ids)
        ))
        .bind(InvitationState::Queued.as_str())
        .bind(after.map_or("", InvitationId::as_str))
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(invitation_from_row).collect()
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn associable_invitations(
        &self,
        location_ids: &[LocationId],
        limit: i64,
    ) -> Result<Vec<(Invitation, MirrorUser)>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        // The mirror's columns under other names: the invitation has an email too.
        let rows = sqlx::query(&format!(
            "SELECT {INV_COLS}, {JOINED_MIRROR_COLS}
             FROM engine_invitations i JOIN engine_mirror m
               ON m.location_id = i.location_id AND m.client_user_id = i.client_user_id
             WHERE i.location_id IN ({}) AND i.state NOT IN ({}) AND m.status = $1
             LIMIT $2",
            id_list(location_ids),
            terminal_states()
        ))
        .bind(UserStatus::Associated.as_str())
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(invitation_with_mirror).collect()
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn registered_invitations(
        &self,
        location_ids: &[LocationId],
        limit: i64,
    ) -> Result<Vec<(Invitation, MirrorUser)>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {INV_COLS}, {JOINED_MIRROR_COLS}
             FROM engine_invitations i JOIN engine_mirror m
               ON m.location_id = i.location_id AND m.client_user_id = i.client_user_id
             WHERE i.state = $1 AND i.location_id IN ({}) AND m.status = $2
               AND m.invite_code IS NOT NULL
             ORDER BY i.created_at LIMIT $3",
            id_list(location_ids),
        ))
        .bind(InvitationState::Registering.as_str())
        .bind(UserStatus::Registered.as_str())
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(invitation_with_mirror).collect()
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn next_invitation_due(&self, location_ids: &[LocationId]) -> Result<Option<i64>> {
        if location_ids.is_empty() {
            return Ok(None);
        }
        // The partial index `engine_invitations_due` (non-terminal, by next_action_at).
        let row = sqlx::query(&format!(
            "SELECT MIN(i.next_action_at) AS due FROM engine_invitations i
             WHERE i.state NOT IN ({}) AND i.location_id IN ({})",
            terminal_states(),
            id_list(location_ids)
        ))
        .fetch_one(&self.reader)
        .await
        .map_err(err)?;
        row::get(&row, "due")
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn claim_locations(&self, owner: &str, now: i64, lease_ms: i64) -> Result<Vec<Location>> {
        // One statement: on PostgreSQL a row another instance is claiming at the same
        // moment is re-checked after its commit, so a lease is never taken twice.
        let rows = sqlx::query(&format!(
            "UPDATE engine_locations SET lease_owner = $1, lease_until = $2
             WHERE lease_owner = $3 OR lease_owner IS NULL OR lease_until IS NULL OR lease_until < $4
             RETURNING {LOC_COLS}"
        ))
        .bind(owner)
        .bind(now.saturating_add(lease_ms))
        .bind(owner)
        .bind(now)
        .fetch_all(&self.writer)
        .await
        .map_err(err)?;
        let mut held = rows
            .iter()
            .map(location_from_row)
            .collect::<Result<Vec<_>>>()?;
        held.sort_by_key(|l| l.id);
        Ok(held)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn release_locations(&self, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE engine_locations SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self, client_user_ids, emails), fields(people = client_user_ids.len() + emails.len()), level = "debug")]
    async fn find_invitations(
        &self,
        client_user_ids: &[String],
        emails: &[String],
    ) -> Result<Vec<Invitation>> {
        let mut out = Vec::new();
        // Emails in any case (the index is on LOWER(email)).
        let emails: Vec<String> = emails.iter().map(|e| e.to_lowercase()).collect();
        for (col, keys) in [
            ("i.client_user_id", client_user_ids),
            ("LOWER(i.email)", emails.as_slice()),
        ] {
            for chunk in keys.chunks(row::rows_per_statement(1, 0)) {
                let sql = format!(
                    "SELECT {INV_COLS} FROM engine_invitations i WHERE {col} IN ({})",
                    row::list(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for k in chunk {
                    q = q.bind(k);
                }
                for r in q.fetch_all(&self.reader).await.map_err(err)? {
                    out.push(invitation_from_row(&r)?);
                }
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn put_location_app(&self, app: &LocationApp) -> Result<()> {
        sqlx::query(
            "INSERT INTO engine_location_apps (location_id, adam_id, pricing_param, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT(location_id, adam_id) DO UPDATE SET pricing_param = excluded.pricing_param",
        )
        .bind(app.location_id.0)
        .bind(&app.adam_id)
        .bind(app.pricing_param.as_str())
        .bind(app.created_at)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn location_apps(&self, location_ids: &[LocationId]) -> Result<Vec<LocationApp>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {APP_COLS} FROM engine_location_apps WHERE location_id IN ({}) ORDER BY location_id, adam_id",
            id_list(location_ids)
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(app_from_row).collect()
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn remove_location_app(&self, location_id: LocationId, adam_id: &str) -> Result<bool> {
        let r =
            sqlx::query("DELETE FROM engine_location_apps WHERE location_id = $1 AND adam_id = $2")
                .bind(location_id.0)
                .bind(adam_id)
                .execute(&self.writer)
                .await
                .map_err(err)?;
        Ok(r.rows_affected() > 0)
    }

    #[tracing::instrument(skip(self, assignments), fields(assignments = assignments.len()), level = "debug")]
    async fn create_assignments(&self, assignments: &[Assignment]) -> Result<u64> {
        if assignments.is_empty() {
            return Ok(0);
        }
        let mut created = 0;
        let mut tx = self.begin_write().await?;
        for chunk in assignments.chunks(row::rows_per_statement(ASG_N, 0)) {
            let sql = format!(
                "INSERT INTO engine_assignments ({ASG_COLS}) VALUES {}
                 ON CONFLICT(location_id, client_user_id, adam_id) DO NOTHING",
                row::tuples(1, chunk.len(), ASG_N)
            );
            let mut q = sqlx::query(&sql);
            for a in chunk {
                q = bind_assignment(q, a);
            }
            created += q.execute(&mut *tx).await.map_err(err)?.rows_affected();
        }
        tx.commit().await.map_err(err)?;
        Ok(created)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn assignments(&self, f: &AssignmentFilter) -> Result<Vec<Assignment>> {
        let mut sql = format!("SELECT {ASG_COLS} FROM engine_assignments WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.state.is_some() {
            sql.push_str(&format!(" AND state = {}", next()));
        }
        if f.location_id.is_some() {
            sql.push_str(&format!(" AND location_id = {}", next()));
        }
        if f.adam_id.is_some() {
            sql.push_str(&format!(" AND adam_id = {}", next()));
        }
        if f.client_user_id.is_some() {
            sql.push_str(&format!(" AND client_user_id = {}", next()));
        }
        sql.push_str(&format!(" ORDER BY created_at DESC, id LIMIT {}", next()));
        let mut q = sqlx::query(&sql);
        if let Some(s) = f.state {
            q = q.bind(s.as_str());
        }
        if let Some(l) = f.location_id {
            q = q.bind(l.0);
        }
        if let Some(a) = &f.adam_id {
            q = q.bind(a);
        }
        if let Some(c) = &f.client_user_id {
            q = q.bind(c);
        }
        let rows = q
            .bind(f.limit.unwrap_or(1000))
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        rows.iter().map(assignment_from_row).collect()
    }

    #[tracing::instrument(skip(self, people), fields(people = people.len()), level = "debug")]
    async fn assignments_of(&self, people: &[(LocationId, String)]) -> Result<Vec<Assignment>> {
        let mut out = Vec::new();
        for chunk in people.chunks(row::rows_per_statement(2, 0)) {
            let sql = format!(
                // The keys drive a join (see open_invitations).
                "WITH k(location_id, client_user_id) AS (VALUES {})
                 SELECT {} FROM k CROSS JOIN engine_assignments a
                 WHERE a.location_id = k.location_id AND a.client_user_id = k.client_user_id",
                row::tuples(1, chunk.len(), 2),
                ASG_COLS
                    .split(", ")
                    .map(|c| format!("a.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (loc, cuid) in chunk {
                q = q.bind(loc.0).bind(cuid);
            }
            for r in q.fetch_all(&self.reader).await.map_err(err)? {
                out.push(assignment_from_row(&r)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn event_assignments(
        &self,
        location_id: LocationId,
        event_id: &str,
    ) -> Result<Vec<Assignment>> {
        let rows = sqlx::query(&format!(
            "SELECT {ASG_COLS} FROM engine_assignments WHERE location_id = $1 AND event_id = $2 AND state = $3"
        ))
        .bind(location_id.0)
        .bind(event_id)
        .bind(AssignmentState::Requested.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(assignment_from_row).collect()
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn assignment_counts(&self) -> Result<Vec<(AssignmentState, i64)>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM engine_assignments GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    row::parsed(r, "state", AssignmentState::parse)?,
                    row::get(r, "n")?,
                ))
            })
            .collect()
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn missing_assignments(
        &self,
        location_ids: &[LocationId],
        limit: i64,
    ) -> Result<Vec<(String, LocationApp)>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        // DISTINCT: a person invited on several devices has several associated invitations.
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT i.client_user_id AS person, a.location_id, a.adam_id, a.pricing_param, a.created_at
             FROM engine_invitations i JOIN engine_location_apps a ON a.location_id = i.location_id
             WHERE i.state = $1 AND i.location_id IN ({})
               AND NOT EXISTS (SELECT 1 FROM engine_assignments s WHERE s.location_id = i.location_id
                                 AND s.client_user_id = i.client_user_id AND s.adam_id = a.adam_id)
             LIMIT $2",
            id_list(location_ids)
        ))
        .bind(InvitationState::Associated.as_str())
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| Ok((row::get(r, "person")?, app_from_row(r)?)))
            .collect()
    }

    #[tracing::instrument(skip(self, location_ids), fields(locations = location_ids.len()), level = "debug")]
    async fn claim_assignments(
        &self,
        owner: &str,
        location_ids: &[LocationId],
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Assignment>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        // A materialised choice, run once (see claim_notifications in lib.rs).
        let rows = sqlx::query(&format!(
            "WITH picked AS MATERIALIZED (
                SELECT id FROM engine_assignments
                WHERE state IN {OPEN_ASSIGNMENT_STATES} AND next_action_at <= $3 AND location_id IN ({})
                  AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < $3 OR lease_owner = $1)
                ORDER BY next_action_at, id LIMIT $4{})
             UPDATE engine_assignments SET lease_owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM picked)
             RETURNING {ASG_COLS}",
            id_list(location_ids),
            self.dialect.skip_locked("engine_assignments")
        ))
        .bind(owner)
        .bind(now.saturating_add(lease_ms))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.writer)
        .await
        .map_err(err)?;
        let mut out = rows
            .iter()
            .map(assignment_from_row)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.next_action_at, &a.id).cmp(&(b.next_action_at, &b.id)));
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn renew_assignment_leases(&self, owner: &str, now: i64, lease_ms: i64) -> Result<()> {
        sqlx::query("UPDATE engine_assignments SET lease_until = $1 WHERE lease_owner = $2")
            .bind(now.saturating_add(lease_ms))
            .bind(owner)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self, assignments), fields(assignments = assignments.len()), level = "debug")]
    async fn save_assignments(
        &self,
        owner: &str,
        assignments: &[Assignment],
        release: bool,
    ) -> Result<u64> {
        if assignments.is_empty() {
            return Ok(0);
        }
        let lease = if release {
            ", lease_owner = NULL, lease_until = NULL"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE engine_assignments SET {ASG_SET}{lease} WHERE id = $9 AND lease_owner = $11"
        );
        let mut written = 0;
        let mut tx = self.begin_write().await?;
        for a in assignments {
            written += bind_assignment_change(sqlx::query(&sql), a)
                .bind(owner)
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
        }
        tx.commit().await.map_err(err)?;
        Ok(written)
    }

    #[tracing::instrument(skip(self, assignments), fields(assignments = assignments.len()), level = "debug")]
    async fn update_idle_assignments(&self, assignments: &[Assignment], now: i64) -> Result<u64> {
        if assignments.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE engine_assignments SET {ASG_SET}, lease_owner = NULL, lease_until = NULL
             WHERE id = $9 AND version = $11 AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < $12)"
        );
        let mut written = 0;
        let mut tx = self.begin_write().await?;
        for a in assignments {
            written += bind_assignment_change(sqlx::query(&sql), a)
                .bind(a.version)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
        }
        tx.commit().await.map_err(err)?;
        Ok(written)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn wake_waiting(
        &self,
        location_id: LocationId,
        adam_id: &str,
        pricing_param: PricingParam,
        now: i64,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE engine_assignments SET next_action_at = $1, version = version + 1
             WHERE location_id = $2 AND adam_id = $3 AND pricing_param = $4 AND state = $5 AND next_action_at > $1",
        )
        .bind(now)
        .bind(location_id.0)
        .bind(adam_id)
        .bind(pricing_param.as_str())
        .bind(AssignmentState::Waiting.as_str())
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(r.rows_affected())
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn release_assignments(&self, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE engine_assignments SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }
}
