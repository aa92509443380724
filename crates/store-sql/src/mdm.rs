//! SQL implementation of [`MdmStore`].
//!
//! Rows are read by column name into typed values ([`crate::row`]): an enrollment kind,
//! platform or command status that is not one of ours is [`StoreError::Corrupt`].

use crate::row;
use crate::{err, SqlStore};
use async_trait::async_trait;
use cloudvpp_store::mdm::{
    AuthenticateInfo, CertBinding, CommandState, CommandStatus, CommandUuid, EnrollmentId,
    EnrollmentRecord, EnrollmentType, MdmStore, Platform, QueuedCommand, ReportOutcome,
    TokenUpdateInfo,
};
use cloudvpp_store::{Result, StoreError};
use sqlx::any::AnyRow;
use std::collections::HashSet;

const ENROLLMENT_COLS: &str =
    "e.id, e.device_id, e.kind, COALESCE(d.platform, 'unknown') AS platform, e.user_short_name, e.topic, \
     e.push_magic, e.token_hex, e.enabled, e.token_update_tally, e.last_seen_at";

fn enrollment_from_row(r: &AnyRow) -> Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        id: EnrollmentId::new(row::get::<String>(r, "id")?),
        device_id: EnrollmentId::new(row::get::<String>(r, "device_id")?),
        kind: row::parsed(r, "kind", EnrollmentType::parse)?,
        platform: row::parsed(r, "platform", Platform::parse)?,
        user_short_name: row::get(r, "user_short_name")?,
        topic: row::get(r, "topic")?,
        push_magic: row::get(r, "push_magic")?,
        token_hex: row::get(r, "token_hex")?,
        enabled: row::flag(r, "enabled")?,
        token_update_tally: row::get(r, "token_update_tally")?,
        last_seen_at: row::get(r, "last_seen_at")?,
    })
}

/// Columns of a command state; `result` (the raw report) is read only where shown.
const STATE_COLS: &str =
    "q.enrollment_id, q.command_uuid, c.request_type, q.status, q.invitation_result, \
     q.not_now_tally, q.active, q.created_at, q.updated_at";

fn state_from_row(r: &AnyRow, with_result: bool) -> Result<CommandState> {
    Ok(CommandState {
        enrollment_id: EnrollmentId::new(row::get::<String>(r, "enrollment_id")?),
        command_uuid: CommandUuid::new(row::get::<String>(r, "command_uuid")?),
        request_type: row::get(r, "request_type")?,
        status: row::parsed_opt(r, "status", CommandStatus::parse)?,
        result: if with_result {
            row::get(r, "result")?
        } else {
            None
        },
        invitation_result: row::get(r, "invitation_result")?,
        not_now_tally: row::get(r, "not_now_tally")?,
        active: row::flag(r, "active")?,
        created_at: row::get(r, "created_at")?,
        updated_at: row::get(r, "updated_at")?,
    })
}

fn command_from_row(r: &AnyRow) -> Result<QueuedCommand> {
    Ok(QueuedCommand {
        command_uuid: CommandUuid::new(row::get::<String>(r, "command_uuid")?),
        request_type: row::get(r, "request_type")?,
        command: row::get(r, "command")?,
    })
}

#[async_trait]
impl MdmStore for SqlStore {
    fn signals(&self) -> std::sync::Arc<cloudvpp_store::signals::QueueSignals> {
        self.signals.clone()
    }

    #[tracing::instrument(skip(self, device_id, sha256), fields(device_id = %device_id), level = "debug")]
    async fn cert_associated(&self, device_id: &EnrollmentId, sha256: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM mdm_cert_auth WHERE device_id = $1 AND sha256 = $2 AND replaced_at IS NULL",
        )
        .bind(device_id.as_str())
        .bind(sha256)
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        Ok(row.is_some())
    }

    #[tracing::instrument(skip(self, device_id, subject), fields(device_id = %device_id), level = "debug")]
    async fn associate_cert(
        &self,
        device_id: &EnrollmentId,
        sha256: &str,
        subject: &str,
        now: i64,
    ) -> Result<Option<String>> {
        // A binding that changes voids the certificate other instances remember for the device.
        let signals = self.signals.writing([device_id.as_str()]);
        let mut tx = self.begin_write().await?;
        let existing =
            sqlx::query("SELECT device_id, replaced_at FROM mdm_cert_auth WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
        if let Some(r) = existing {
            let owner: String = row::get(&r, "device_id")?;
            let replaced: Option<i64> = row::get(&r, "replaced_at")?;
            return match (owner == device_id.as_str(), replaced) {
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
        let previous: Option<String> = match sqlx::query(
            "SELECT sha256 FROM mdm_cert_auth WHERE device_id = $1 AND replaced_at IS NULL",
        )
        .bind(device_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        {
            Some(r) => Some(row::get(&r, "sha256")?),
            None => None,
        };
        sqlx::query(
            "UPDATE mdm_cert_auth SET replaced_at = $1 WHERE device_id = $2 AND replaced_at IS NULL",
        )
        .bind(now)
        .bind(device_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // Unique indexes keep one current certificate per device and one device per
        // certificate: of two racing Authenticates the second fails (Conflict) and retries.
        sqlx::query(
            "INSERT INTO mdm_cert_auth (device_id, sha256, created_at, subject) VALUES ($1, $2, $3, $4)",
        )
        .bind(device_id.as_str())
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
        self.notify_signals(signals.slots()).await;
        Ok(previous)
    }

    #[tracing::instrument(skip(self, device_id), fields(device_id = %device_id), level = "debug")]
    async fn cert_bindings(&self, device_id: &EnrollmentId) -> Result<Vec<CertBinding>> {
        let rows = sqlx::query(
            "SELECT sha256, subject, created_at, replaced_at FROM mdm_cert_auth WHERE device_id = $1
             ORDER BY replaced_at IS NULL DESC, created_at DESC, sha256",
        )
        .bind(device_id.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok(CertBinding {
                    sha256: row::get(r, "sha256")?,
                    subject: row::get(r, "subject")?,
                    bound_at: row::get(r, "created_at")?,
                    replaced_at: row::get(r, "replaced_at")?,
                })
            })
            .collect()
    }

    #[tracing::instrument(skip(self, info), fields(device_id = %info.device_id), level = "debug")]
    async fn authenticate(&self, info: &AuthenticateInfo, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO mdm_devices (id, kind, platform, serial_number, topic, authenticate, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, platform = excluded.platform,
               serial_number = excluded.serial_number, topic = excluded.topic,
               authenticate = excluded.authenticate, updated_at = excluded.updated_at",
        )
        .bind(info.device_id.as_str())
        .bind(info.kind.as_str())
        .bind(info.platform.as_str())
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
        .bind(info.device_id.as_str())
        .bind(info.device_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("UPDATE mdm_enrollments SET enabled = 0, token_update_tally = 0, updated_at = $1 WHERE device_id = $2")
            .bind(now)
            .bind(info.device_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    // The push magic and token are never recorded.
    #[tracing::instrument(skip(self, info), fields(id = %info.id), level = "debug")]
    async fn token_update(&self, info: &TokenUpdateInfo, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let device = sqlx::query("SELECT 1 FROM mdm_devices WHERE id = $1")
            .bind(info.device_id.as_str())
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
        .bind(info.id.as_str())
        .bind(info.device_id.as_str())
        .bind(info.kind.as_str())
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

    #[tracing::instrument(skip(self, device_id), fields(device_id = %device_id), level = "debug")]
    async fn check_out(&self, device_id: &EnrollmentId, now: i64) -> Result<()> {
        sqlx::query("UPDATE mdm_enrollments SET enabled = 0, updated_at = $1 WHERE device_id = $2")
            .bind(now)
            .bind(device_id.as_str())
            .execute(&self.writer)
            .await
            .map_err(err)?;
        Ok(())
    }

    #[tracing::instrument(skip(self, id), fields(id = %id), level = "debug")]
    async fn enrollment(&self, id: &EnrollmentId) -> Result<Option<EnrollmentRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {ENROLLMENT_COLS} FROM mdm_enrollments e LEFT JOIN mdm_devices d ON d.id = e.device_id WHERE e.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn list_enrollments(
        &self,
        device_id: Option<&EnrollmentId>,
    ) -> Result<Vec<EnrollmentRecord>> {
        let rows = match device_id {
            Some(d) => sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLS} FROM mdm_enrollments e LEFT JOIN mdm_devices d ON d.id = e.device_id
                 WHERE e.device_id = $1 ORDER BY e.id"
            ))
            .bind(d.as_str())
            .fetch_all(&self.reader)
            .await,
            None => sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLS} FROM mdm_enrollments e LEFT JOIN mdm_devices d ON d.id = e.device_id ORDER BY e.id"
            ))
            .fetch_all(&self.reader)
            .await,
        }
        .map_err(err)?;
        rows.iter().map(enrollment_from_row).collect()
    }

    #[tracing::instrument(skip(self, seen), fields(enrollments = seen.len()), level = "debug")]
    async fn touch(&self, seen: &[(EnrollmentId, i64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // One statement per chunk: `seen` holds every device that checked in during the
        // last second, which is thousands at scale.
        let mut tx = self.begin_write().await?;
        for chunk in seen.chunks(row::rows_per_statement(2, 0)) {
            let sql = format!(
                "WITH v(id, t) AS (VALUES {})
                 UPDATE mdm_enrollments SET last_seen_at = {}(COALESCE(last_seen_at, 0), v.t)
                 FROM v WHERE mdm_enrollments.id = v.id",
                row::tuples(1, chunk.len(), 2),
                self.dialect.greatest()
            );
            let mut q = sqlx::query(&sql);
            for (id, at) in chunk {
                q = q.bind(id.as_str()).bind(*at);
            }
            q.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    #[tracing::instrument(skip(self, ids, cmd), fields(command_uuid = %cmd.command_uuid, targets = ids.len()), level = "debug")]
    async fn enqueue(
        &self,
        ids: &[EnrollmentId],
        cmd: &QueuedCommand,
        now: i64,
    ) -> Result<Vec<EnrollmentId>> {
        // In flight from before the transaction to after its commit: idle check-ins of
        // these enrollments stop trusting "empty" until it is over.
        let signals = self.signals.writing(ids.iter().map(EnrollmentId::as_str));
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO mdm_commands (command_uuid, request_type, command, created_at) VALUES ($1, $2, $3, $4)")
            .bind(cmd.command_uuid.as_str())
            .bind(&cmd.request_type)
            .bind(&cmd.command)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        // Each target once, in the order given.
        let mut once = HashSet::new();
        let wanted: Vec<&EnrollmentId> = ids.iter().filter(|id| once.insert(*id)).collect();
        // Which targets exist: one query per chunk, not one per target.
        let mut known: HashSet<String> = HashSet::with_capacity(wanted.len());
        for chunk in wanted.chunks(row::rows_per_statement(1, 0)) {
            let sql = format!(
                "SELECT id FROM mdm_enrollments WHERE id IN ({})",
                row::list(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(&mut *tx).await.map_err(err)? {
                known.insert(row::get(&r, "id")?);
            }
        }
        let queued: Vec<EnrollmentId> = wanted
            .into_iter()
            .filter(|id| known.contains(id.as_str()))
            .cloned()
            .collect();
        // One multi-row INSERT per chunk; rows go in the order given (the FIFO `seq`).
        for chunk in queued.chunks(row::rows_per_statement(1, 2)) {
            let values = (0..chunk.len())
                .map(|i| format!("(${}, $1, $2)", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO mdm_queue (enrollment_id, command_uuid, created_at) VALUES {values}"
            );
            let mut q = sqlx::query(&sql).bind(cmd.command_uuid.as_str()).bind(now);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.notify_signals(signals.slots()).await;
        Ok(queued)
    }

    #[tracing::instrument(skip(self, id, command_uuid, raw), fields(id = %id, command_uuid = %command_uuid), level = "debug")]
    async fn store_report(
        &self,
        id: &EnrollmentId,
        command_uuid: &CommandUuid,
        status: CommandStatus,
        raw: &[u8],
        invitation_result: Option<&str>,
        now: i64,
    ) -> Result<ReportOutcome> {
        let not_now = status == CommandStatus::NotNow;
        let sql = if not_now {
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
            .bind(status.as_str())
            .bind(raw)
            .bind(invitation_result)
            .bind(now);
        if not_now {
            q = q.bind(now);
        }
        let done = q
            .bind(id.as_str())
            .bind(command_uuid.as_str())
            .execute(&self.writer)
            .await
            .map_err(err)?;
        if done.rows_affected() > 0 {
            return Ok(ReportOutcome::Stored);
        }
        // A late NotNow for a command already answered changes nothing, but is not foreign.
        let exists =
            sqlx::query("SELECT 1 FROM mdm_queue WHERE enrollment_id = $1 AND command_uuid = $2")
                .bind(id.as_str())
                .bind(command_uuid.as_str())
                .fetch_optional(&self.writer)
                .await
                .map_err(err)?;
        Ok(if exists.is_some() {
            ReportOutcome::Stored
        } else {
            ReportOutcome::NotQueuedHere
        })
    }

    #[tracing::instrument(skip(self, id), fields(id = %id), level = "debug")]
    async fn next_command(
        &self,
        id: &EnrollmentId,
        skip_not_now: bool,
    ) -> Result<Option<QueuedCommand>> {
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
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(err)?;
        row.as_ref().map(command_from_row).transpose()
    }

    #[tracing::instrument(skip(self, id, command_uuid), fields(id = %id, command_uuid = %command_uuid), level = "debug")]
    async fn command_state(
        &self,
        id: &EnrollmentId,
        command_uuid: &CommandUuid,
    ) -> Result<Option<CommandState>> {
        let row = sqlx::query(&format!(
            "SELECT {STATE_COLS}, q.result FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE q.enrollment_id = $1 AND q.command_uuid = $2"
        ))
        .bind(id.as_str())
        .bind(command_uuid.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(err)?;
        row.as_ref().map(|r| state_from_row(r, true)).transpose()
    }

    #[tracing::instrument(skip(self, keys), fields(keys = keys.len()), level = "debug")]
    async fn command_states(
        &self,
        keys: &[(EnrollmentId, CommandUuid)],
    ) -> Result<Vec<CommandState>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(row::rows_per_statement(2, 0)) {
            let sql = format!(
                // The keys drive a join (primary-key probes): as a row-value
                // `IN (VALUES ...)`, SQLite scans the whole queue.
                "WITH k(enrollment_id, command_uuid) AS (VALUES {})
                 SELECT {STATE_COLS} FROM k CROSS JOIN mdm_queue q
                 JOIN mdm_commands c ON c.command_uuid = q.command_uuid
                 WHERE q.enrollment_id = k.enrollment_id AND q.command_uuid = k.command_uuid",
                row::tuples(1, chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (id, uuid) in chunk {
                q = q.bind(id.as_str()).bind(uuid.as_str());
            }
            for r in q.fetch_all(&self.reader).await.map_err(err)? {
                out.push(state_from_row(&r, false)?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self, id), fields(id = %id), level = "debug")]
    async fn list_commands(
        &self,
        id: &EnrollmentId,
        pending_only: bool,
    ) -> Result<Vec<CommandState>> {
        let filter = if pending_only {
            " AND q.active = 1 AND (q.status IS NULL OR q.status = 'NotNow')"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT {STATE_COLS}, q.result FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid
             WHERE q.enrollment_id = $1{filter} ORDER BY q.seq"
        ))
        .bind(id.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(err)?;
        rows.iter().map(|r| state_from_row(r, true)).collect()
    }
}

/// The PostgreSQL channel on which MDM writers name the signal slots they changed
/// (`cloudvpp_store::signals`): comma-separated slot numbers, or `*` for all.
pub const SIGNALS_CHANNEL: &str = "cloudvpp_mdm_signals";

impl SqlStore {
    /// Tells other instances which slots a committed write changed. Sent after the commit,
    /// on its own: PostgreSQL serialises the commits of transactions that NOTIFY (a
    /// database-wide lock held through the WAL flush), which made every enqueue and every
    /// Authenticate wait for the previous one's flush. A NOTIFY alone writes no WAL. If
    /// the process dies between the commit and this, the listeners' periodic reset
    /// (`store-postgres`) bounds how long others trust what they remembered. SQLite's
    /// processes share the slots' memory instead.
    async fn notify_signals(&self, slots: &[usize]) {
        if self.dialect != crate::Dialect::Postgres || slots.is_empty() {
            return;
        }
        let mut payload = slots
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // PostgreSQL refuses payloads of 8000 bytes or more.
        if payload.len() > 7000 {
            payload = "*".into();
        }
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SIGNALS_CHANNEL)
            .bind(payload)
            .execute(&self.writer)
            .await
        {
            tracing::warn!(error = %e, "telling other instances of a queued command failed; they notice within a minute");
        }
    }
}
