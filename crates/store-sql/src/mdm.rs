//! PostgreSQL implementation of [`MdmStore`].

use crate::{err, SqlStore};
use async_trait::async_trait;
use cloudvpp_store::mdm::{
    AuthenticateInfo, CertBinding, CommandState, EnrollmentRecord, MdmStore, QueuedCommand,
    ReportOutcome, TokenUpdateInfo,
};
use cloudvpp_store::{Result, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

const ENROLLMENT_COLS: &str =
    "e.id, e.device_id, e.kind, COALESCE(d.platform, 'unknown'), e.user_short_name, e.topic, \
     e.push_magic, e.token_hex, e.enabled, e.token_update_tally, e.last_seen_at";

fn enrollment_from_row(r: &AnyRow) -> EnrollmentRecord {
    EnrollmentRecord {
        id: r.get(0),
        device_id: r.get(1),
        kind: r.get(2),
        platform: r.get(3),
        user_short_name: r.get(4),
        topic: r.get(5),
        push_magic: r.get(6),
        token_hex: r.get(7),
        enabled: r.get::<i64, _>(8) != 0,
        token_update_tally: r.get(9),
        last_seen_at: r.get(10),
    }
}

const STATE_COLS: &str =
    "q.enrollment_id, q.command_uuid, c.request_type, q.status, q.result, q.invitation_result, \
     q.not_now_tally, q.active, q.created_at, q.updated_at";

fn state_from_row(r: &AnyRow) -> CommandState {
    CommandState {
        enrollment_id: r.get(0),
        command_uuid: r.get(1),
        request_type: r.get(2),
        status: r.get(3),
        result: r.get(4),
        invitation_result: r.get(5),
        not_now_tally: r.get(6),
        active: r.get::<i64, _>(7) != 0,
        created_at: r.get(8),
        updated_at: r.get(9),
    }
}

#[async_trait]
impl MdmStore for SqlStore {
    async fn cert_associated(&self, device_id: &str, sha256: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM mdm_cert_auth WHERE device_id = $1 AND sha256 = $2 AND replaced_at IS NULL",
        )
        .bind(device_id)
        .bind(sha256)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.is_some())
    }

    async fn associate_cert(
        &self,
        device_id: &str,
        sha256: &str,
        subject: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let existing =
            sqlx::query("SELECT device_id, replaced_at FROM mdm_cert_auth WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
        if let Some(row) = existing {
            let owner: String = row.get(0);
            let replaced: Option<i64> = row.get(1);
            return match (owner == device_id, replaced) {
                (false, _) => Err(StoreError::Conflict(format!(
                    "certificate already belongs to enrollment {owner}"
                ))),
                // A replaced certificate never comes back: a stolen key or a replayed
                // Authenticate must not undo a re-enrollment.
                (true, Some(_)) => Err(StoreError::Conflict(
                    "certificate was replaced by a re-enrollment".into(),
                )),
                (true, None) => {
                    tx.commit().await.map_err(err)?;
                    Ok(None)
                }
            };
        }
        let previous: Option<String> = sqlx::query(
            "SELECT sha256 FROM mdm_cert_auth WHERE device_id = $1 AND replaced_at IS NULL",
        )
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        .map(|r| r.get(0));
        sqlx::query(
            "UPDATE mdm_cert_auth SET replaced_at = $1 WHERE device_id = $2 AND replaced_at IS NULL",
        )
        .bind(now)
        .bind(device_id)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // Unique indexes keep one current certificate per device and one device per
        // certificate: of two racing Authenticates the second fails (Conflict) and retries.
        sqlx::query(
            "INSERT INTO mdm_cert_auth (device_id, sha256, created_at, subject) VALUES ($1, $2, $3, $4)",
        )
        .bind(device_id)
        .bind(sha256)
        .bind(now)
        .bind(subject)
        .execute(&mut *tx)
        .await
        .map_err(|e| match err(e) {
            StoreError::Conflict(_) => StoreError::Conflict(
                "another Authenticate with this device or certificate came first; retry".into(),
            ),
            other => other,
        })?;
        tx.commit().await.map_err(err)?;
        Ok(previous)
    }

    async fn cert_bindings(&self, device_id: &str) -> Result<Vec<CertBinding>> {
        let rows = sqlx::query(
            "SELECT sha256, subject, created_at, replaced_at FROM mdm_cert_auth WHERE device_id = $1
             ORDER BY replaced_at IS NULL DESC, created_at DESC, sha256",
        )
        .bind(device_id)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| CertBinding {
                sha256: r.get(0),
                subject: r.get(1),
                bound_at: r.get(2),
                replaced_at: r.get(3),
            })
            .collect())
    }

    async fn authenticate(&self, info: &AuthenticateInfo, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO mdm_devices (id, kind, platform, serial_number, topic, authenticate, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, platform = excluded.platform,
               serial_number = excluded.serial_number, topic = excluded.topic,
               authenticate = excluded.authenticate, updated_at = excluded.updated_at",
        )
        .bind(&info.device_id)
        .bind(&info.kind)
        .bind(&info.platform)
        .bind(&info.serial_number)
        .bind(&info.topic)
        .bind(&info.raw)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // A re-enrolled device starts with empty queues: a leftover RemoveProfile must not
        // unenroll it again (micromdm#646).
        sqlx::query(
            "UPDATE mdm_queue SET active = 0, updated_at = $1 WHERE active = 1 AND (status IS NULL OR status = 'NotNow')
               AND enrollment_id IN (SELECT id FROM mdm_enrollments WHERE device_id = $2 UNION SELECT $3)",
        )
        .bind(now)
        .bind(&info.device_id)
        .bind(&info.device_id)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("UPDATE mdm_enrollments SET enabled = 0, token_update_tally = 0, updated_at = $1 WHERE device_id = $2")
            .bind(now)
            .bind(&info.device_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn token_update(&self, info: &TokenUpdateInfo, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let device = sqlx::query("SELECT 1 FROM mdm_devices WHERE id = $1")
            .bind(&info.device_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        if device.is_none() {
            return Err(StoreError::Conflict(format!(
                "device {} never authenticated",
                info.device_id
            )));
        }
        sqlx::query(
            "INSERT INTO mdm_enrollments (id, device_id, kind, user_short_name, topic, push_magic, token_hex, enabled,
               token_update_tally, awaiting_configuration, token_update, last_seen_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 1, $8, $9, $10, $11, $12)
             ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, user_short_name = excluded.user_short_name,
               topic = excluded.topic, push_magic = excluded.push_magic, token_hex = excluded.token_hex, enabled = 1,
               token_update_tally = mdm_enrollments.token_update_tally + 1,
               awaiting_configuration = excluded.awaiting_configuration, token_update = excluded.token_update,
               last_seen_at = excluded.last_seen_at, updated_at = excluded.updated_at",
        )
        .bind(&info.id)
        .bind(&info.device_id)
        .bind(&info.kind)
        .bind(&info.user_short_name)
        .bind(&info.topic)
        .bind(&info.push_magic)
        .bind(&info.token_hex)
        .bind(info.awaiting_configuration as i64)
        .bind(&info.raw)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn check_out(&self, device_id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE mdm_enrollments SET enabled = 0, updated_at = $1 WHERE device_id = $2")
            .bind(now)
            .bind(device_id)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn enrollment(&self, id: &str) -> Result<Option<EnrollmentRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {ENROLLMENT_COLS} FROM mdm_enrollments e LEFT JOIN mdm_devices d ON d.id = e.device_id WHERE e.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.as_ref().map(enrollment_from_row))
    }

    async fn list_enrollments(&self, device_id: Option<&str>) -> Result<Vec<EnrollmentRecord>> {
        let rows = match device_id {
            Some(d) => sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLS} FROM mdm_enrollments e LEFT JOIN mdm_devices d ON d.id = e.device_id
                 WHERE e.device_id = $1 ORDER BY e.id"
            ))
            .bind(d)
            .fetch_all(&self.reader)
            .await,
            None => sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLS} FROM mdm_enrollments e LEFT JOIN mdm_devices d ON d.id = e.device_id ORDER BY e.id"
            ))
            .fetch_all(&self.reader)
            .await,
        }
        .map_err(err)?;
        Ok(rows.iter().map(enrollment_from_row).collect())
    }

    async fn touch(&self, seen: &[(String, i64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE mdm_enrollments SET last_seen_at = {}(COALESCE(last_seen_at, 0), $1) WHERE id = $2",
            self.dialect.greatest()
        );
        let mut tx = self.begin_write().await?;
        for (id, at) in seen {
            sqlx::query(&sql)
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn enqueue(&self, ids: &[String], cmd: &QueuedCommand, now: i64) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO mdm_commands (command_uuid, request_type, command, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&cmd.command_uuid)
            .bind(&cmd.request_type)
            .bind(&cmd.command)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let mut queued = Vec::with_capacity(ids.len());
        for id in ids {
            let exists = sqlx::query("SELECT 1 FROM mdm_enrollments WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
            if exists.is_none() {
                continue;
            }
            sqlx::query(
                "INSERT INTO mdm_queue (enrollment_id, command_uuid, created_at) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(&cmd.command_uuid)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            queued.push(id.clone());
        }
        tx.commit().await.map_err(err)?;
        Ok(queued)
    }

    async fn store_report(
        &self,
        id: &str,
        command_uuid: &str,
        status: &str,
        raw: &[u8],
        invitation_result: Option<&str>,
        now: i64,
    ) -> Result<ReportOutcome> {
        let sql = if status == "NotNow" {
            "UPDATE mdm_queue SET status = $1, result = $2, invitation_result = COALESCE($3, invitation_result),
               not_now_at = COALESCE(not_now_at, $4), not_now_tally = not_now_tally + 1, updated_at = $5
             WHERE enrollment_id = $6 AND command_uuid = $7 AND (status IS NULL OR status = 'NotNow')"
        } else {
            // A final status is never overwritten by a later NotNow, and is idempotent.
            "UPDATE mdm_queue SET status = $1, result = $2, invitation_result = COALESCE($3, invitation_result),
               updated_at = $4
             WHERE enrollment_id = $5 AND command_uuid = $6"
        };
        let mut q = sqlx::query(sql)
            .bind(status)
            .bind(raw)
            .bind(invitation_result)
            .bind(now);
        if status == "NotNow" {
            q = q.bind(now);
        }
        let done = q
            .bind(id)
            .bind(command_uuid)
            .execute(&self.writer)
            .await
            .map_err(err)?;
        if done.rows_affected() > 0 {
            return Ok(ReportOutcome::Stored);
        }
        // A late NotNow for a command already answered changes nothing, but is not foreign.
        let exists =
            sqlx::query("SELECT 1 FROM mdm_queue WHERE enrollment_id = $1 AND command_uuid = $2")
                .bind(id)
                .bind(command_uuid)
                .fetch_optional(&self.writer)
                .await
                .map_err(err)?;
        Ok(if exists.is_some() {
            ReportOutcome::Stored
        } else {
            ReportOutcome::NotQueuedHere
        })
    }

    async fn next_command(&self, id: &str, skip_not_now: bool) -> Result<Option<QueuedCommand>> {
        let sql = if skip_not_now {
            "SELECT q.command_uuid, c.request_type, c.command FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE q.enrollment_id = $1 AND q.active = 1 AND (q.status IS NULL OR q.status = 'NotNow') AND q.status IS NULL
             ORDER BY q.seq LIMIT 1"
        } else {
            "SELECT q.command_uuid, c.request_type, c.command FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE q.enrollment_id = $1 AND q.active = 1 AND (q.status IS NULL OR q.status = 'NotNow')
             ORDER BY q.seq LIMIT 1"
        };
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(err)?;
        Ok(row.map(|r| QueuedCommand {
            command_uuid: r.get(0),
            request_type: r.get(1),
            command: r.get(2),
        }))
    }

    async fn command_state(&self, id: &str, command_uuid: &str) -> Result<Option<CommandState>> {
        let row = sqlx::query(&format!(
            "SELECT {STATE_COLS} FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE q.enrollment_id = $1 AND q.command_uuid = $2"
        ))
        .bind(id)
        .bind(command_uuid)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.as_ref().map(state_from_row))
    }

    async fn list_commands(&self, id: &str, pending_only: bool) -> Result<Vec<CommandState>> {
        let filter = if pending_only {
            " AND q.active = 1 AND (q.status IS NULL OR q.status = 'NotNow')"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT {STATE_COLS} FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE q.enrollment_id = $1{filter} ORDER BY q.seq"
        ))
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(state_from_row).collect())
    }
}
