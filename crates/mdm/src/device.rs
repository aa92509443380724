//! `PUT /checkin` and `PUT /mdm`: identity, then the check-in message or the command
//! report, then (for reports) the next command.

use crate::error::MdmError;
use crate::MdmState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudvpp_identity::{cert_from_header, chain_from_header, verify_mdm_signature, DeviceCert};
use cloudvpp_mdmwire::{
    CheckinMessage, EnrollmentType, Platform, Report, ReportStatus, CHECKIN_CONTENT_TYPE,
};
use cloudvpp_store::mdm::{
    AuthenticateInfo, CommandStatus, CommandUuid, EnrollmentId, ReportOutcome, TokenUpdateInfo,
};
use cloudvpp_store::StoreError;
use std::net::SocketAddr;

/// Largest body accepted (a report can carry large query answers): the plist decoders'
/// own input limit, so a body the router lets through is never refused for its size alone.
pub const MAX_BODY: usize = cloudvpp_mdmwire::PlistLimits::DEFAULT.max_input;

/// Checks the device certificate: from the proxy header when configured (and only from
/// the proxy), otherwise from `Mdm-Signature` over the exact body; then against the CAs.
/// The certificate returned is the one whose key signed (or that the proxy saw).
fn identify(
    state: &MdmState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<DeviceCert, MdmError> {
    let presented = match &state.config.cert_header {
        Some(proxy) => {
            if !proxy.addresses.is_empty()
                && !proxy.addresses.iter().any(|n| n.contains(&peer.ip()))
            {
                return Err(MdmError::bad(format!(
                    "{} set by {}, which is not a trusted proxy",
                    proxy.header,
                    peer.ip()
                )));
            }
            if let Some(secret) = &proxy.secret {
                let given = single(headers, crate::PROXY_SECRET_HEADER)?.unwrap_or_default();
                if !cloudvpp_store::secret::equal(given, secret) {
                    return Err(MdmError::bad(format!(
                        "request from {} without the proxy's shared secret",
                        peer.ip()
                    )));
                }
            }
            let value = single(headers, &proxy.header)?
                .ok_or_else(|| MdmError::bad(format!("no {} certificate header", proxy.header)))?;
            let mut presented =
                cert_from_header(value).map_err(|e| MdmError::bad(e.to_string()))?;
            if let Some(chain) = single(headers, "client-cert-chain")? {
                presented.others =
                    chain_from_header(chain).map_err(|e| MdmError::bad(e.to_string()))?;
            }
            presented
        }
        None => {
            let sig = headers
                .get("Mdm-Signature")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| MdmError::bad("no Mdm-Signature header"))?;
            verify_mdm_signature(sig, body).map_err(|e| MdmError::bad(e.to_string()))?
        }
    };
    state
        .config
        .ca
        .verify(&presented)
        .map_err(|e| MdmError::bad(e.to_string()))
}

/// The one value of a header the proxy sets. A repeated header is refused: a proxy that
/// appends its header instead of replacing it would otherwise leave the client's own
/// first in line.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, MdmError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(MdmError::bad(format!("{name} appears more than once")));
    }
    first
        .map(|v| {
            v.to_str()
                .map_err(|_| MdmError::bad(format!("{name} is not ASCII")))
        })
        .transpose()
}

/// Every message after Authenticate must come with the certificate the device
/// authenticated with last (user channels present the device's certificate).
async fn require_bound(
    state: &MdmState,
    device_id: &EnrollmentId,
    dc: &DeviceCert,
) -> Result<(), MdmError> {
    let known = state
        .bound
        .get(device_id.as_str())
        .filter(|e| e.0 == dc.sha256 && state.still(device_id.as_str(), e.1))
        .is_some();
    if known {
        return Ok(());
    }
    // Stamped before the read: a binding replaced after it voids what is remembered.
    let fresh = state.fresh(device_id.as_str());
    let bound = state
        .store
        .cert_associated(device_id, &dc.sha256)
        .await
        .map_err(MdmError::internal)?;
    if bound {
        remember_binding(state, device_id.as_str(), &dc.sha256, fresh);
        Ok(())
    } else {
        Err(MdmError::bad("certificate is not the one this enrollment authenticated with, or the enrollment is unknown")
            .for_enrollment(device_id.as_str()))
    }
}

fn remember_binding(state: &MdmState, device_id: &str, sha256: &str, fresh: crate::Fresh) {
    if state.bound.len() >= crate::CACHE_ENTRIES {
        state.bound.clear();
    }
    state
        .bound
        .insert(device_id.to_string(), (sha256.to_string(), fresh));
}

fn is_checkin(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with(CHECKIN_CONTENT_TYPE))
}

/// `PUT /checkin` (CheckInURL).
pub async fn checkin_endpoint(
    State(state): State<MdmState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match checkin(&state, peer, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `PUT /mdm` (ServerURL): command reports, and check-ins when no CheckInURL is set.
pub async fn mdm_endpoint(
    State(state): State<MdmState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = if is_checkin(&headers) {
        checkin(&state, peer, &headers, &body).await
    } else {
        report(&state, peer, &headers, &body).await
    };
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn empty() -> Response {
    StatusCode::OK.into_response()
}

async fn checkin(
    state: &MdmState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, MdmError> {
    let dc = identify(state, peer, headers, body)?;
    let msg = CheckinMessage::decode(body).map_err(|e| MdmError::bad(e.to_string()))?;
    let who = msg
        .keys()
        .resolve()
        .map_err(|e| MdmError::bad(e.to_string()))?;
    metrics::counter!(
        "cloudvpp_mdm_checkins_total",
        "message_type" => checkin_label(&msg.message_type)
    )
    .increment(1);
    let device_id = EnrollmentId::from(who.device_id.as_str());
    let now = state.now_ms();
    let topic = || {
        msg.topic
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| MdmError::bad("no Topic").for_enrollment(&who.id))
    };
    match msg.message_type.as_str() {
        "Authenticate" => {
            if who.kind.is_user_channel() {
                return Err(
                    MdmError::bad("Authenticate comes from the device channel only")
                        .for_enrollment(&who.id),
                );
            }
            let topic = topic()?;
            // The device's ID, not its serial number: the serial in the message is the
            // sender's own word, so a certificate naming the sender's serial would let it
            // claim any UDID.
            if state.config.require_device_id_in_cert && !dc.names_any(&[who.device_id.as_str()]) {
                return Err(MdmError::bad(format!(
                    "certificate {} does not name this device's ID {}",
                    dc.subject(),
                    who.device_id
                ))
                .for_enrollment(&who.id));
            }
            let replaced = match state
                .store
                .associate_cert(&device_id, &dc.sha256, &dc.subject(), now)
                .await
            {
                Ok(r) => r,
                Err(StoreError::Conflict(why)) => {
                    return Err(MdmError::bad(why).for_enrollment(&who.id))
                }
                Err(e) => return Err(MdmError::internal(e)),
            };
            if let Some(old) = replaced {
                tracing::warn!(
                    enrollment = who.id,
                    old_cert = old,
                    new_cert = dc.sha256,
                    subject = dc.subject(),
                    "re-enrollment: certificate binding replaced; the old certificate no longer works"
                );
            }
            let fresh = state.fresh(&who.device_id);
            remember_binding(state, &who.device_id, &dc.sha256, fresh);
            let platform = Platform::detect(msg.product_name.as_deref(), msg.model.as_deref());
            state
                .store
                .authenticate(
                    &AuthenticateInfo {
                        device_id: device_id.clone(),
                        kind: who.kind,
                        platform,
                        serial_number: msg.serial_number.clone(),
                        topic,
                        raw: body.to_vec(),
                    },
                    now,
                )
                .await
                .map_err(MdmError::internal)?;
            tracing::info!(
                enrollment = who.id,
                platform = platform.as_str(),
                "Authenticate"
            );
            Ok(empty())
        }
        "TokenUpdate" => {
            require_bound(state, &device_id, &dc).await?;
            let topic = topic()?;
            let token = msg
                .token
                .as_ref()
                .map(|t| hex::encode(Vec::<u8>::from(t.clone())))
                .filter(|t| !t.is_empty());
            let (Some(token_hex), Some(push_magic)) =
                (token, msg.push_magic.clone().filter(|p| !p.is_empty()))
            else {
                return Err(
                    MdmError::bad("TokenUpdate without Token or PushMagic").for_enrollment(&who.id)
                );
            };
            let info = TokenUpdateInfo {
                id: EnrollmentId::from(who.id.as_str()),
                device_id: device_id.clone(),
                kind: who.kind,
                user_short_name: match who.kind {
                    EnrollmentType::User | EnrollmentType::SharedIpad => {
                        msg.user_short_name.clone()
                    }
                    _ => None,
                },
                topic,
                push_magic,
                token_hex,
                awaiting_configuration: msg.awaiting_configuration.unwrap_or(false),
                raw: body.to_vec(),
            };
            match state.store.token_update(&info, now).await {
                Ok(()) => {}
                Err(StoreError::Conflict(why)) => {
                    return Err(MdmError::bad(why).for_enrollment(&who.id))
                }
                Err(e) => return Err(MdmError::internal(e)),
            }
            tracing::info!(enrollment = who.id, kind = who.kind.as_str(), "TokenUpdate");
            Ok(empty())
        }
        "CheckOut" => {
            require_bound(state, &device_id, &dc).await?;
            state
                .store
                .check_out(&device_id, now)
                .await
                .map_err(MdmError::internal)?;
            tracing::info!(enrollment = who.id, "CheckOut");
            Ok(empty())
        }
        "UserAuthenticate" => {
            // Apple's answer for "do not manage this user for this session".
            require_bound(state, &device_id, &dc).await?;
            Ok((StatusCode::GONE, "UserAuthenticate declined\n").into_response())
        }
        other => Err(
            MdmError::bad(format!("unsupported check-in MessageType {other:?}"))
                .for_enrollment(&who.id),
        ),
    }
}

/// The `message_type` label of `cloudvpp_mdm_checkins_total`: Apple's names, anything
/// else as "other" (a device must not be able to add series).
fn checkin_label(message_type: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Authenticate",
        "TokenUpdate",
        "CheckOut",
        "UserAuthenticate",
        "GetBootstrapToken",
        "SetBootstrapToken",
        "DeclarativeManagement",
        "GetToken",
    ];
    KNOWN
        .iter()
        .find(|k| **k == message_type)
        .copied()
        .unwrap_or("other")
}

async fn report(
    state: &MdmState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, MdmError> {
    let dc = identify(state, peer, headers, body)?;
    let (r, status) = Report::decode(body).map_err(|e| MdmError::bad(e.to_string()))?;
    let who = r
        .keys()
        .resolve()
        .map_err(|e| MdmError::bad(e.to_string()))?;
    require_bound(state, &EnrollmentId::from(who.device_id.as_str()), &dc).await?;
    metrics::counter!("cloudvpp_mdm_reports_total", "status" => status.as_str()).increment(1);
    let id = EnrollmentId::from(who.id.as_str());
    let now = state.now_ms();
    state.seen.insert(id.clone(), now);
    // An idle device whose queue is known empty: answered without the database.
    if status == ReportStatus::Idle {
        let known = state.known_empty(&id);
        metrics::counter!(
            "cloudvpp_mdm_idle_answers_total",
            "from" => if known { "memory" } else { "database" }
        )
        .increment(1);
        if known {
            return Ok(empty());
        }
    }
    if let Some(stored) = CommandStatus::from_report(status) {
        let uuid = CommandUuid::from(r.command_uuid.as_deref().unwrap_or_default());
        let invitation = r.invitation_result.as_deref();
        if let Some(v) = invitation {
            if !cloudvpp_mdmwire::INVITATION_RESULTS.contains(&v) {
                tracing::warn!(
                    enrollment = who.id,
                    value = v,
                    "unknown InvitationResult stored as sent"
                );
            }
        }
        let outcome = state
            .store
            .store_report(&id, &uuid, stored, body, invitation, now)
            .await
            .map_err(MdmError::internal)?;
        if outcome == ReportOutcome::NotQueuedHere {
            return Err(
                MdmError::bad(format!("command {uuid} is not queued for this enrollment"))
                    .for_enrollment(&who.id),
            );
        }
        tracing::debug!(
            enrollment = who.id,
            command = %uuid,
            status = status.as_str(),
            "report"
        );
    }
    // A NotNow'd command is not offered again in the same session; it comes back first
    // on the next report that is not NotNow.
    let skip_not_now = status == ReportStatus::NotNow;
    // Stamped before the read, so that a command queued after it voids the answer.
    let stamp = state.signals.stamp(id.as_str());
    match state
        .store
        .next_command(&id, skip_not_now)
        .await
        .map_err(MdmError::internal)?
    {
        Some(cmd) => Ok(([(header::CONTENT_TYPE, "application/xml")], cmd.command).into_response()),
        None => {
            // After a NotNow the queue may hold the NotNow'd command: not empty.
            if let (false, Some(stamp)) = (skip_not_now, stamp) {
                state.remember_empty(id, stamp);
            }
            Ok(empty())
        }
    }
}
