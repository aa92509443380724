//! The MDM service as code sees it, with no HTTP in it: queue a command, choose the
//! channel an invitation goes to, push with a typed outcome, read command states. The
//! admin API ([`crate::api`]) and the invitation engine both go through it, so the rules
//! (who may get `InviteToProgram`, which enrollments are pushed) are written once.

use crate::push::Pusher;
use cloudvpp_store::clock::Clock;
use cloudvpp_store::mdm::{
    CommandState, CommandUuid, EnrollmentId, EnrollmentRecord, EnrollmentType, MdmStore, Platform,
    QueuedCommand,
};
use cloudvpp_store::StoreError;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `RequestType` of the invitation command.
pub const INVITE_TO_PROGRAM: &str = "InviteToProgram";

/// The MDM service's operations. Cheap to clone.
#[derive(Clone)]
pub struct MdmService {
    store: Arc<dyn MdmStore>,
    pusher: Option<Arc<Pusher>>,
    clock: Arc<dyn Clock>,
}

/// Why a command was not queued at all.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// A command with this CommandUUID was queued before.
    #[error("CommandUUID {0} already exists")]
    Duplicate(CommandUuid),
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
}

/// What [`MdmService::enqueue`] did with each target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Targets the command is now queued for, in the order given.
    pub queued: Vec<EnrollmentId>,
    /// Targets that are not enrollments.
    pub unknown: Vec<EnrollmentId>,
}

/// How a push went for one enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// APNs took it; its `apns-id`.
    Sent(String),
    /// It was not sent.
    Failed(PushFailure),
}

/// Why a push was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushFailure {
    /// No APNs client configured.
    #[error("push is not configured (--apns-url, --push-cert, --push-key)")]
    NotConfigured,
    /// Checked out, or awaiting TokenUpdate.
    #[error("enrollment is disabled (checked out or awaiting TokenUpdate)")]
    Disabled,
    /// No such enrollment.
    #[error("unknown enrollment")]
    UnknownEnrollment,
    /// Reading the enrollment failed (logged).
    #[error("storage failure")]
    Storage,
    /// APNs refused it, or could not be reached, after the retries.
    #[error("{0}")]
    Apns(String),
}

/// Why `InviteToProgram` cannot go to a channel (Apple's availability table).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelRefusal {
    /// No such enrollment.
    #[error("enrollment {0} is unknown")]
    Unknown(EnrollmentId),
    /// User Enrollment (BYOD), either channel.
    #[error("InviteToProgram is not allowed on User Enrollment")]
    UserEnrollment,
    /// The device channel of a Shared iPad.
    #[error("on Shared iPad InviteToProgram goes to the user channel (UDID:ManagedAppleID)")]
    SharedIpadDeviceChannel,
    /// The device channel of a Mac.
    #[error(
        "on macOS InviteToProgram goes to the user channel (UDID:UserID), not the device channel"
    )]
    MacDeviceChannel,
    /// A Mac or Shared iPad without an enabled user channel.
    #[error("no user channel enrolled yet on this device")]
    NoUserChannel,
    /// A Mac or Shared iPad with several enabled user channels.
    #[error("several user channels on this device: name one")]
    SeveralUserChannels,
    /// Another platform or channel kind.
    #[error("InviteToProgram is not available on this channel ({} {})", .platform.as_str(), .kind.as_str())]
    NotAvailable {
        /// The device's platform.
        platform: Platform,
        /// The channel's kind.
        kind: EnrollmentType,
    },
}

/// Apple's availability of `InviteToProgram` on one channel: the device channel on iOS,
/// the user channel on macOS and Shared iPad, never User Enrollment, nothing else.
/// `device_is_shared_ipad`: the device has a Shared iPad user channel.
pub fn invite_channel_check(
    e: &EnrollmentRecord,
    device_is_shared_ipad: bool,
) -> Result<(), ChannelRefusal> {
    match (e.kind, e.platform) {
        (EnrollmentType::UserEnrollment | EnrollmentType::UserEnrollmentDevice, _) => {
            Err(ChannelRefusal::UserEnrollment)
        }
        (EnrollmentType::SharedIpad, _) => Ok(()),
        (EnrollmentType::Device, Platform::Ios) if device_is_shared_ipad => {
            Err(ChannelRefusal::SharedIpadDeviceChannel)
        }
        (EnrollmentType::Device, Platform::Ios) => Ok(()),
        (EnrollmentType::User, Platform::MacOs) => Ok(()),
        (EnrollmentType::Device, Platform::MacOs) => Err(ChannelRefusal::MacDeviceChannel),
        (kind, platform) => Err(ChannelRefusal::NotAvailable { platform, kind }),
    }
}

/// Whether a device is a Shared iPad: it has a Shared iPad user channel.
fn is_shared_ipad(device_channels: &[EnrollmentRecord]) -> bool {
    device_channels
        .iter()
        .any(|s| s.kind == EnrollmentType::SharedIpad)
}

/// The channel an invitation for `target` goes to, among its device's channels
/// (`device_channels`, all of them, `target` included): a Mac's or a Shared iPad's one
/// enabled user channel when `target` is their device channel, `target` otherwise; then
/// checked by [`invite_channel_check`].
pub fn choose_invite_channel<'a>(
    target: &'a EnrollmentRecord,
    device_channels: &'a [EnrollmentRecord],
) -> Result<&'a EnrollmentRecord, ChannelRefusal> {
    let shared = is_shared_ipad(device_channels);
    let chosen = if target.kind == EnrollmentType::Device
        && (target.platform == Platform::MacOs || shared)
    {
        let users: Vec<&EnrollmentRecord> = device_channels
            .iter()
            .filter(|s| s.enabled && s.kind.is_user_channel())
            .collect();
        match users.as_slice() {
            [one] => *one,
            [] => return Err(ChannelRefusal::NoUserChannel),
            _ => return Err(ChannelRefusal::SeveralUserChannels),
        }
    } else {
        target
    };
    invite_channel_check(chosen, shared)?;
    Ok(chosen)
}

impl MdmService {
    /// The service over `store`, pushing through `pusher` when there is one.
    pub fn new(store: Arc<dyn MdmStore>, pusher: Option<Pusher>, clock: Arc<dyn Clock>) -> Self {
        MdmService {
            store,
            pusher: pusher.map(Arc::new),
            clock,
        }
    }

    /// The store, for reads the service does not wrap.
    pub fn store(&self) -> &Arc<dyn MdmStore> {
        &self.store
    }

    /// Whether pushes can be sent at all.
    pub fn can_push(&self) -> bool {
        self.pusher.is_some()
    }

    /// Queues `cmd` for the existing enrollments among `ids`, in one transaction. Nothing is
    /// stored when `ids` is empty.
    pub async fn enqueue(
        &self,
        ids: &[EnrollmentId],
        cmd: &QueuedCommand,
    ) -> Result<Enqueued, EnqueueError> {
        if ids.is_empty() {
            return Ok(Enqueued::default());
        }
        let queued = match self.store.enqueue(ids, cmd, self.clock.now_ms()).await {
            Ok(q) => q,
            Err(StoreError::Conflict(_)) => {
                return Err(EnqueueError::Duplicate(cmd.command_uuid.clone()))
            }
            Err(e) => return Err(EnqueueError::Store(e)),
        };
        let unknown = ids
            .iter()
            .filter(|id| !queued.contains(id))
            .cloned()
            .collect();
        Ok(Enqueued { queued, unknown })
    }

    /// Pushes one enrollment (enabled ones only).
    pub async fn push_one(&self, id: &EnrollmentId) -> PushOutcome {
        let e = match self.store.enrollment(id).await {
            Ok(Some(e)) if e.enabled => e,
            Ok(Some(_)) => return PushOutcome::Failed(PushFailure::Disabled),
            Ok(None) => return PushOutcome::Failed(PushFailure::UnknownEnrollment),
            Err(err) => {
                tracing::error!(error = %err, enrollment = %id, "push: reading the enrollment");
                return PushOutcome::Failed(PushFailure::Storage);
            }
        };
        match &self.pusher {
            None => PushOutcome::Failed(PushFailure::NotConfigured),
            Some(p) => match p.push(&e).await {
                Ok(apns_id) => PushOutcome::Sent(apns_id),
                Err(why) => PushOutcome::Failed(PushFailure::Apns(why)),
            },
        }
    }

    /// Pushes enrollments concurrently; one outcome per distinct ID.
    pub async fn push(&self, ids: &[EnrollmentId]) -> BTreeMap<EnrollmentId, PushOutcome> {
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            let (svc, id) = (self.clone(), id.clone());
            set.spawn(async move {
                let r = svc.push_one(&id).await;
                (id, r)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(Ok((id, r))) = set.join_next().await {
            out.insert(id, r);
        }
        out
    }

    /// Whether `InviteToProgram` may go to `id` as it is (no other channel is chosen).
    pub async fn check_invite_target(
        &self,
        id: &EnrollmentId,
    ) -> Result<Result<(), ChannelRefusal>, StoreError> {
        let Some(e) = self.store.enrollment(id).await? else {
            return Ok(Err(ChannelRefusal::Unknown(id.clone())));
        };
        let siblings = self.store.list_enrollments(Some(&e.device_id)).await?;
        Ok(invite_channel_check(&e, is_shared_ipad(&siblings)))
    }

    /// The channel an invitation for `target` goes to ([`choose_invite_channel`]).
    pub async fn invite_channel(
        &self,
        target: &EnrollmentId,
    ) -> Result<Result<EnrollmentId, ChannelRefusal>, StoreError> {
        let Some(e) = self.store.enrollment(target).await? else {
            return Ok(Err(ChannelRefusal::Unknown(target.clone())));
        };
        let siblings = self.store.list_enrollments(Some(&e.device_id)).await?;
        Ok(choose_invite_channel(&e, &siblings).map(|c| c.id.clone()))
    }

    /// The states of many (enrollment, command) pairs at once, by pair; pairs not queued
    /// are absent. The raw reports are not read.
    pub async fn command_states(
        &self,
        keys: &[(EnrollmentId, CommandUuid)],
    ) -> Result<HashMap<(EnrollmentId, CommandUuid), CommandState>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .command_states(keys)
            .await?
            .into_iter()
            .map(|s| ((s.enrollment_id.clone(), s.command_uuid.clone()), s))
            .collect())
    }
}

/// An `InviteToProgram` command, built as Apple's example.
pub fn invite_to_program(command_uuid: CommandUuid, invitation_url: &str) -> QueuedCommand {
    let command = cloudvpp_mdmwire::invite_to_program(command_uuid.as_str(), invitation_url);
    QueuedCommand {
        command_uuid,
        request_type: INVITE_TO_PROGRAM.into(),
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(id: &str, kind: EnrollmentType, platform: Platform) -> EnrollmentRecord {
        EnrollmentRecord {
            id: EnrollmentId::from(id),
            device_id: EnrollmentId::from(id.split(':').next().unwrap()),
            kind,
            platform,
            user_short_name: None,
            topic: "com.apple.mgmt.test".into(),
            push_magic: "magic".into(),
            token_hex: "00".into(),
            enabled: true,
            token_update_tally: 1,
            last_seen_at: None,
        }
    }

    fn chosen(target: usize, device: &[EnrollmentRecord]) -> Result<&str, ChannelRefusal> {
        choose_invite_channel(&device[target], device).map(|c| c.id.as_str())
    }

    #[test]
    fn an_iphone_gets_it_on_its_device_channel() {
        let device = [channel("IPHONE", EnrollmentType::Device, Platform::Ios)];
        assert_eq!(chosen(0, &device), Ok("IPHONE"));
    }

    #[test]
    fn a_mac_gets_it_on_its_one_user_channel() {
        let device = [
            channel("MAC", EnrollmentType::Device, Platform::MacOs),
            channel("MAC:501", EnrollmentType::User, Platform::MacOs),
        ];
        assert_eq!(chosen(0, &device), Ok("MAC:501"));
        assert_eq!(chosen(1, &device), Ok("MAC:501"));
    }

    #[test]
    fn a_mac_without_a_single_enabled_user_channel_is_refused() {
        let mut device = vec![
            channel("MAC", EnrollmentType::Device, Platform::MacOs),
            channel("MAC:501", EnrollmentType::User, Platform::MacOs),
        ];
        device[1].enabled = false;
        assert_eq!(chosen(0, &device), Err(ChannelRefusal::NoUserChannel));
        device[1].enabled = true;
        device.push(channel("MAC:502", EnrollmentType::User, Platform::MacOs));
        assert_eq!(chosen(0, &device), Err(ChannelRefusal::SeveralUserChannels));
        // Naming one of them works.
        assert_eq!(chosen(2, &device), Ok("MAC:502"));
    }

    #[test]
    fn a_shared_ipad_gets_it_on_its_user_channel_never_the_device_channel() {
        let device = [
            channel("IPAD", EnrollmentType::Device, Platform::Ios),
            channel("IPAD:alice", EnrollmentType::SharedIpad, Platform::Ios),
        ];
        assert_eq!(chosen(0, &device), Ok("IPAD:alice"));
        assert_eq!(
            invite_channel_check(&device[0], true),
            Err(ChannelRefusal::SharedIpadDeviceChannel)
        );
    }

    #[test]
    fn user_enrollment_and_other_platforms_are_refused() {
        let byod = [
            channel("ENR", EnrollmentType::UserEnrollmentDevice, Platform::Ios),
            channel("ENR:user", EnrollmentType::UserEnrollment, Platform::Ios),
        ];
        assert_eq!(chosen(0, &byod), Err(ChannelRefusal::UserEnrollment));
        assert_eq!(chosen(1, &byod), Err(ChannelRefusal::UserEnrollment));
        let tv = [channel("TV", EnrollmentType::Device, Platform::TvOs)];
        let refusal = chosen(0, &tv).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "InviteToProgram is not available on this channel (tvOS Device)"
        );
        let mac = [channel("MAC", EnrollmentType::Device, Platform::MacOs)];
        assert_eq!(
            invite_channel_check(&mac[0], false),
            Err(ChannelRefusal::MacDeviceChannel)
        );
    }
}
