//! PostgreSQL implementation of [`EngineStore`].

use crate::{err, SqlStore};
use async_trait::async_trait;
use cloudvpp_abwire::{ResponseUser, UserStatus};
use cloudvpp_store::engine::{
    DeliveryState, EngineStore, Invitation, InvitationFilter, Location, MirrorUser,
};
use cloudvpp_store::Result;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

const LOC_COLS: &str = "id, name, stoken, base_url, uid, notify_token, version_id, expires_at_secs, conflict, last_full_sync_at, last_sync_at";

/// A literal list of location IDs for `IN (...)`: integers only, so nothing to escape.
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn location_from_row(r: &AnyRow) -> Location {
    Location {
        id: r.get(0),
        name: r.get(1),
        stoken: r.get(2),
        base_url: r.get(3),
        uid: r.get(4),
        notify_token_digest: r.get(5),
        version_id: r.get(6),
        expires_at: r.get(7),
        conflict: r.get::<i64, _>(8) != 0,
        last_full_sync_at: r.get(9),
        last_sync_at: r.get(10),
    }
}

const INV_COLS: &str = "i.id, i.location_id, i.client_user_id, i.email, i.enrollment_id, i.channel, i.state, i.reason, i.invite_code, \
     i.invitation_url, i.event_id, i.command_uuid, i.invitation_result, i.attempts, i.created_at, i.updated_at, i.next_action_at";

fn invitation_from_row(r: &AnyRow) -> Invitation {
    Invitation {
        id: r.get(0),
        location_id: r.get(1),
        client_user_id: r.get(2),
        email: r.get(3),
        enrollment_id: r.get(4),
        channel: r.get(5),
        state: r.get(6),
        reason: r.get(7),
        invite_code: r.get(8),
        invitation_url: r.get(9),
        event_id: r.get(10),
        command_uuid: r.get(11),
        invitation_result: r.get(12),
        attempts: r.get(13),
        created_at: r.get(14),
        updated_at: r.get(15),
        next_action_at: r.get(16),
    }
}

#[async_trait]
impl EngineStore for SqlStore {
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
        Ok(location_from_row(&row))
    }

    async fn locations(&self) -> Result<Vec<Location>> {
        let rows = sqlx::query(&format!(
            "SELECT {LOC_COLS} FROM engine_locations ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(location_from_row).collect())
    }

    async fn location(&self, id: i64) -> Result<Option<Location>> {
        let row = sqlx::query(&format!(
            "SELECT {LOC_COLS} FROM engine_locations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.as_ref().map(location_from_row))
    }

    async fn location_synced(
        &self,
        id: i64,
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
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn reset_location_version(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE engine_locations SET version_id = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn set_location_conflict(&self, id: i64, conflict: bool) -> Result<()> {
        sqlx::query("UPDATE engine_locations SET conflict = $1 WHERE id = $2")
            .bind(conflict as i64)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn upsert_mirror(
        &self,
        location_id: i64,
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
        let mut tx = self.begin_write().await?;
        for u in best.values() {
            let status = match u.status {
                UserStatus::Deleted => "Retired",
                s => s.as_str(),
            };
            sqlx::query(
                "INSERT INTO engine_mirror (location_id, client_user_id, status, invite_code, id_hash, email, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT(location_id, client_user_id) DO UPDATE SET status = excluded.status,
                   invite_code = CASE WHEN excluded.status = 'Retired' THEN engine_mirror.invite_code ELSE excluded.invite_code END,
                   id_hash = COALESCE(excluded.id_hash, CASE WHEN excluded.status = 'Retired' THEN engine_mirror.id_hash END),
                   email = COALESCE(excluded.email, engine_mirror.email), updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(&u.client_user_id)
            .bind(status)
            .bind(&u.invite_code)
            .bind(&u.id_hash)
            .bind(&u.email)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn mirror_user(
        &self,
        location_id: i64,
        client_user_id: &str,
    ) -> Result<Option<MirrorUser>> {
        let row = sqlx::query("SELECT client_user_id, status, invite_code, id_hash, email FROM engine_mirror WHERE location_id = $1 AND client_user_id = $2")
            .bind(location_id)
            .bind(client_user_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(err)?;
        Ok(row.map(|r| MirrorUser {
            client_user_id: r.get(0),
            status: r.get(1),
            invite_code: r.get(2),
            id_hash: r.get(3),
            email: r.get(4),
        }))
    }

    async fn mirror_count(&self, location_id: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM engine_mirror WHERE location_id = $1")
            .bind(location_id)
            .fetch_one(&self.reader)
            .await
            .map_err(err)?;
        Ok(row.get(0))
    }

    async fn notification_first_seen(&self, notification_id: &str, now: i64) -> Result<bool> {
        let r = sqlx::query("INSERT INTO engine_notifications_seen (notification_id, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(notification_id)
            .bind(now)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn create_invitations(&self, invitations: &[Invitation]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for i in invitations {
            write_invitation(&mut tx, i, true).await?;
        }
        tx.commit().await.map_err(err)
    }

    async fn invitation(&self, id: &str) -> Result<Option<Invitation>> {
        let row = sqlx::query(&format!(
            "SELECT {INV_COLS} FROM engine_invitations i WHERE i.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.as_ref().map(invitation_from_row))
    }

    async fn invitations(&self, f: &InvitationFilter) -> Result<Vec<Invitation>> {
        let mut sql = format!("SELECT {INV_COLS} FROM engine_invitations i WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.state.is_some() {
            sql.push_str(&format!(" AND i.state = {}", next()));
        }
        if f.location_id.is_some() {
            sql.push_str(&format!(" AND i.location_id = {}", next()));
        }
        if f.client_user_id.is_some() {
            sql.push_str(&format!(" AND i.client_user_id = {}", next()));
        }
        sql.push_str(&format!(
            " ORDER BY i.created_at DESC, i.id LIMIT {}",
            next()
        ));
        let mut q = sqlx::query(&sql);
        if let Some(s) = &f.state {
            q = q.bind(s);
        }
        if let Some(l) = f.location_id {
            q = q.bind(l);
        }
        if let Some(c) = &f.client_user_id {
            q = q.bind(c);
        }
        let rows = q
            .bind(f.limit.unwrap_or(1000))
            .fetch_all(&self.reader)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(invitation_from_row).collect())
    }

    async fn invitation_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) FROM engine_invitations GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn update_invitation(&self, i: &Invitation) -> Result<()> {
        let mut conn = self.writer.acquire().await.map_err(err)?;
        write_invitation(&mut conn, i, false).await
    }

    async fn due_invitations(
        &self,
        location_ids: &[i64],
        now: i64,
        limit: i64,
    ) -> Result<Vec<Invitation>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {INV_COLS} FROM engine_invitations i WHERE i.state NOT IN ('associated', 'failed', 'retired') AND i.next_action_at <= $1
               AND i.location_id IN ({})
             ORDER BY i.next_action_at LIMIT $2",
            id_list(location_ids)
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(invitation_from_row).collect())
    }

    async fn delivery_states(
        &self,
        location_ids: &[i64],
        limit: i64,
    ) -> Result<Vec<DeliveryState>> {
        if location_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {INV_COLS}, q.status, q.invitation_result, q.active FROM engine_invitations i
             JOIN mdm_queue q ON q.enrollment_id = i.channel AND q.command_uuid = i.command_uuid
             WHERE i.state = 'queued' AND (q.status IS NOT NULL OR q.active = 0) AND q.updated_at >= i.updated_at - 1
               AND i.location_id IN ({})
             LIMIT $1",
            id_list(location_ids)
        ))
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| DeliveryState {
                invitation: invitation_from_row(r),
                status: r.get(17),
                invitation_result: r.get(18),
                active: r.get::<i64, _>(19) != 0,
            })
            .collect())
    }

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
        let mut held: Vec<Location> = rows.iter().map(location_from_row).collect();
        held.sort_by_key(|l| l.id);
        Ok(held)
    }

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

    async fn associate_from_mirror(&self, location_id: i64, now: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE engine_invitations SET state = 'associated', reason = NULL, updated_at = $1,
               invitation_result = COALESCE(invitation_result, (SELECT q.invitation_result FROM mdm_queue q
                 WHERE q.enrollment_id = engine_invitations.channel AND q.command_uuid = engine_invitations.command_uuid))
             WHERE location_id = $2 AND state NOT IN ('associated', 'failed', 'retired')
               AND EXISTS (SELECT 1 FROM engine_mirror m WHERE m.location_id = engine_invitations.location_id
                 AND m.client_user_id = engine_invitations.client_user_id AND m.status = 'Associated')",
        )
        .bind(now)
        .bind(location_id)
        .execute(&self.writer)
        .await
        .map_err(err)?;
        Ok(r.rows_affected())
    }
}

async fn write_invitation(
    conn: &mut sqlx::AnyConnection,
    i: &Invitation,
    insert: bool,
) -> Result<()> {
    let sql = if insert {
        "INSERT INTO engine_invitations (location_id, client_user_id, email, enrollment_id, channel, state, reason, invite_code,
           invitation_url, event_id, command_uuid, invitation_result, attempts, created_at, updated_at, next_action_at, id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    } else {
        "UPDATE engine_invitations SET location_id = $1, client_user_id = $2, email = $3, enrollment_id = $4, channel = $5, state = $6,
           reason = $7, invite_code = $8, invitation_url = $9, event_id = $10, command_uuid = $11, invitation_result = $12, attempts = $13,
           created_at = $14, updated_at = $15, next_action_at = $16 WHERE id = $17"
    };
    sqlx::query(sql)
        .bind(i.location_id)
        .bind(&i.client_user_id)
        .bind(&i.email)
        .bind(&i.enrollment_id)
        .bind(&i.channel)
        .bind(&i.state)
        .bind(&i.reason)
        .bind(&i.invite_code)
        .bind(&i.invitation_url)
        .bind(&i.event_id)
        .bind(&i.command_uuid)
        .bind(&i.invitation_result)
        .bind(i.attempts)
        .bind(i.created_at)
        .bind(i.updated_at)
        .bind(i.next_action_at)
        .bind(&i.id)
        .execute(conn)
        .await
        .map_err(err)?;
    Ok(())
}
