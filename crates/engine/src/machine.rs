//! The invitation state machine, as pure functions: [`step`] decides from an invitation and
//! what the engine observed of it this round (the mirror's record of the person, the
//! device's answer to the invitation's command) where it goes; [`apply`] writes that
//! decision into the invitation; [`admit`] decides whether asking to invite a person makes
//! a new invitation. No I/O: the worker gathers the observations in batches
//! and stores the invitations that changed.

use cloudvpp_abwire::UserStatus;
use cloudvpp_store::engine::{Invitation, InvitationId, InvitationState, MirrorUser};
use cloudvpp_store::mdm::{CommandState, CommandStatus, CommandUuid, EnrollmentId};

/// Namespace of InviteToProgram command UUIDs (UUID v5 of "invitation id/attempt").
const INVITE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6c6f_7564_7670_7049_6e76_6974_6174_696f);

/// The CommandUUID of an invitation's `attempt`-th InviteToProgram (from 1): it follows
/// from the two, so an instance that takes over a delivery queues the same command, and
/// the administrator page finds every command sent for an invitation.
pub fn invite_command_uuid(invitation: &InvitationId, attempt: i64) -> CommandUuid {
    let key = format!("{invitation}/{attempt}");
    CommandUuid::new(
        uuid::Uuid::new_v5(&INVITE_NAMESPACE, key.as_bytes())
            .to_string()
            .to_uppercase(),
    )
}

/// What was observed of one invitation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed<'a> {
    /// The mirror's record of the person, when it was read.
    pub person: Option<&'a MirrorUser>,
    /// The state of the invitation's InviteToProgram on its channel, when it was read.
    pub command: Option<&'a CommandState>,
}

/// Where an invitation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    Stay,
    /// Still registering and the mirror knows no usable user: register the person (or
    /// follow the event they are in).
    Register,
    /// The mirror shows the person Registered with an invite code: reuse that user.
    Registered {
        /// The user's invite code.
        invite_code: String,
    },
    /// The device acknowledged and showed the invitation.
    Delivered {
        /// The device's InvitationResult (`Acknowledged`, or none sent).
        invitation_result: Option<String>,
    },
    /// The device answered NotNow: stays queued, with a reason.
    NotNow,
    /// The person is Associated at Apps and Books.
    Associated {
        /// The device's InvitationResult, when known.
        invitation_result: Option<String>,
    },
    /// Ended without association.
    Failed {
        /// Why.
        reason: String,
        /// The device's InvitationResult, when it is the reason.
        invitation_result: Option<String>,
    },
}

/// Reason an invitation shows while the device answers NotNow.
pub const NOT_NOW_REASON: &str = "device answered NotNow (Setup Assistant or locked); stays queued";

/// The device's answer, if it concerns the invitation's current command and is news: a
/// report (or a re-enrollment clearing it) no older than the invitation's last change.
fn fresh_answer<'a>(
    inv: &Invitation,
    command: Option<&'a CommandState>,
) -> Option<&'a CommandState> {
    command.filter(|c| {
        inv.channel.as_ref() == Some(&c.enrollment_id)
            && inv.command_uuid.as_ref() == Some(&c.command_uuid)
            && (c.status.is_some() || !c.active)
            && c.updated_at.is_some_and(|u| u >= inv.updated_at - 1)
    })
}

/// Where `inv` goes given what was `seen`.
///
/// - A terminal invitation stays.
/// - A person the mirror shows Associated ends any other invitation `associated`.
/// - `registering`: a Registered user with an invite code is reused; otherwise register.
/// - `queued`: the device's answer: `Acknowledged` with `InvitationResult: Acknowledged`
///   (or none) → delivered; another InvitationResult, `Error` or `CommandFormatError` →
///   failed; `NotNow` → stays queued with a reason; a command cleared by a re-enrollment
///   (inactive, never answered for good) → failed.
pub fn step(inv: &Invitation, seen: Observed<'_>) -> Step {
    if inv.state.is_terminal() {
        return Step::Stay;
    }
    if let Some(person) = seen.person {
        if person.status == UserStatus::Associated {
            let from_device = seen
                .command
                .filter(|c| {
                    inv.channel.as_ref() == Some(&c.enrollment_id)
                        && inv.command_uuid.as_ref() == Some(&c.command_uuid)
                })
                .and_then(|c| c.invitation_result.clone());
            return Step::Associated {
                invitation_result: inv.invitation_result.clone().or(from_device),
            };
        }
    }
    match inv.state {
        InvitationState::Registering => match seen.person {
            Some(MirrorUser {
                status: UserStatus::Registered,
                invite_code: Some(code),
                ..
            }) => Step::Registered {
                invite_code: code.clone(),
            },
            _ => Step::Register,
        },
        InvitationState::Queued => {
            let Some(c) = fresh_answer(inv, seen.command) else {
                return Step::Stay;
            };
            match (c.status, c.invitation_result.as_deref(), c.active) {
                (Some(CommandStatus::Acknowledged), None | Some("Acknowledged"), _) => {
                    Step::Delivered {
                        invitation_result: c.invitation_result.clone(),
                    }
                }
                (Some(CommandStatus::Acknowledged), Some(other), _) => Step::Failed {
                    reason: format!("device answered InvitationResult {other}"),
                    invitation_result: Some(other.to_string()),
                },
                (Some(s @ (CommandStatus::Error | CommandStatus::CommandFormatError)), _, _) => {
                    Step::Failed {
                        reason: format!("device answered {}", s.as_str()),
                        invitation_result: None,
                    }
                }
                (Some(CommandStatus::NotNow), _, true) => Step::NotNow,
                (_, _, false) => Step::Failed {
                    reason: "command cleared: the device enrolled again; resend".into(),
                    invitation_result: None,
                },
                (None, _, true) => Step::Stay,
            }
        }
        _ => Step::Stay,
    }
}

/// Writes `step` into `inv` at `now`; `repush_after_ms`: when an unanswered delivered
/// invitation is looked at again. Returns whether anything changed (what to store).
pub fn apply(inv: &mut Invitation, step: &Step, now: i64, repush_after_ms: i64) -> bool {
    match step {
        Step::Stay | Step::Register => return false,
        Step::Registered { invite_code } => {
            inv.invite_code = Some(invite_code.clone());
            inv.state = InvitationState::Registered;
        }
        Step::Delivered { invitation_result } => {
            inv.invitation_result = invitation_result.clone();
            inv.state = InvitationState::Delivered;
            inv.reason = None;
            inv.next_action_at = now.saturating_add(repush_after_ms);
        }
        Step::NotNow => inv.reason = Some(NOT_NOW_REASON.into()),
        Step::Associated { invitation_result } => {
            inv.invitation_result = invitation_result.clone();
            inv.state = InvitationState::Associated;
            inv.reason = None;
            inv.next_action_at = i64::MAX;
        }
        Step::Failed {
            reason,
            invitation_result,
        } => {
            if invitation_result.is_some() {
                inv.invitation_result = invitation_result.clone();
            }
            inv.state = InvitationState::Failed;
            inv.reason = Some(reason.clone());
            inv.next_action_at = i64::MAX;
        }
    }
    if !matches!(step, Step::Registered { .. }) {
        inv.updated_at = now;
    }
    true
}

/// Why asking to invite a person makes no new invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The person was retired on purpose (through the engine, or at Apps and Books): a
    /// new invitation needs `reinvite_retired`.
    Retired,
    /// The person is associated already.
    Associated,
    /// This person's invitation on this enrollment failed: `resend` it (with a corrected
    /// email or enrollment), so that the failure is seen, not papered over.
    Failed,
}

impl Skip {
    /// The word shown and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Retired => "retired",
            Skip::Associated => "associated",
            Skip::Failed => "failed",
        }
    }
}

/// What asking to invite a person on an enrollment (None: email link only) does.
#[derive(Debug, PartialEq)]
pub enum Admission<'a> {
    /// A new invitation.
    New,
    /// The invitation in progress for this person and enrollment is the answer.
    InProgress(&'a Invitation),
    /// Nothing new; the invitation that decided it, when one did.
    Skipped(Skip, Option<&'a Invitation>),
}

/// Whether a request to invite a person makes a new invitation, given every invitation the
/// engine has of that person (`person`, any state, any enrollment) and whether the mirror
/// shows them retired at Apps and Books. Asking again is idempotent per person: an
/// invitation in progress on the same enrollment is returned; an associated person, a
/// failed invitation on the same enrollment and a retired person are skipped (the last
/// unless `reinvite_retired`). Another enrollment of a person in progress is a new
/// invitation (a second device).
pub fn admit<'a>(
    person: &'a [Invitation],
    enrollment: Option<&EnrollmentId>,
    mirror_retired: bool,
    reinvite_retired: bool,
) -> Admission<'a> {
    let order = |i: &&Invitation| (i.created_at, i.id.clone());
    let newest = person.iter().max_by_key(order);
    if let Some(n) = newest.filter(|n| n.state == InvitationState::Retired) {
        if !reinvite_retired {
            return Admission::Skipped(Skip::Retired, Some(n));
        }
    }
    let same = |i: &&Invitation| i.enrollment_id.as_ref() == enrollment;
    if let Some(open) = person
        .iter()
        .filter(same)
        .filter(|i| !i.state.is_terminal())
        .max_by_key(order)
    {
        return Admission::InProgress(open);
    }
    // Association counts since the person's last retirement only.
    let retired_at = person
        .iter()
        .filter(|i| i.state == InvitationState::Retired)
        .map(|i| i.created_at)
        .max();
    if let Some(a) = person
        .iter()
        .filter(|i| i.state == InvitationState::Associated)
        .filter(|i| retired_at.is_none_or(|r| i.created_at > r))
        .max_by_key(order)
    {
        return Admission::Skipped(Skip::Associated, Some(a));
    }
    if let Some(f) = person
        .iter()
        .filter(same)
        .max_by_key(order)
        .filter(|i| i.state == InvitationState::Failed)
    {
        return Admission::Skipped(Skip::Failed, Some(f));
    }
    let open = person.iter().any(|i| !i.state.is_terminal());
    if mirror_retired && !open && !reinvite_retired {
        return Admission::Skipped(Skip::Retired, None);
    }
    Admission::New
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudvpp_store::engine::{InvitationId, LocationId};
    use cloudvpp_store::mdm::{CommandUuid, EnrollmentId};

    const T0: i64 = 1_000_000;

    fn invitation(state: InvitationState) -> Invitation {
        Invitation {
            id: InvitationId::from("inv-1"),
            location_id: LocationId(1),
            client_user_id: "alice".into(),
            email: Some("alice@example.com".into()),
            enrollment_id: Some(EnrollmentId::from("IPHONE")),
            channel: None,
            state,
            reason: None,
            invite_code: None,
            invitation_url: None,
            event_id: None,
            command_uuid: None,
            invitation_result: None,
            attempts: 0,
            created_at: T0,
            updated_at: T0,
            next_action_at: T0,
        }
    }

    fn queued() -> Invitation {
        let mut inv = invitation(InvitationState::Queued);
        inv.invite_code = Some("CODE".into());
        inv.channel = Some(EnrollmentId::from("IPHONE"));
        inv.command_uuid = Some(CommandUuid::from("CMD-1"));
        inv.attempts = 1;
        inv
    }

    fn person(status: UserStatus, invite_code: Option<&str>) -> MirrorUser {
        MirrorUser {
            client_user_id: "alice".into(),
            status,
            invite_code: invite_code.map(str::to_string),
            id_hash: None,
            email: None,
        }
    }

    fn answer(status: Option<CommandStatus>, result: Option<&str>, active: bool) -> CommandState {
        CommandState {
            enrollment_id: EnrollmentId::from("IPHONE"),
            command_uuid: CommandUuid::from("CMD-1"),
            request_type: "InviteToProgram".into(),
            status,
            result: None,
            invitation_result: result.map(str::to_string),
            not_now_tally: 0,
            active,
            created_at: T0,
            updated_at: Some(T0 + 10),
        }
    }

    fn on_device(inv: &Invitation, c: &CommandState) -> Step {
        step(
            inv,
            Observed {
                person: None,
                command: Some(c),
            },
        )
    }

    #[test]
    fn registering_reuses_a_registered_user_or_registers() {
        let inv = invitation(InvitationState::Registering);
        let known = person(UserStatus::Registered, Some("CODE"));
        let s = step(
            &inv,
            Observed {
                person: Some(&known),
                command: None,
            },
        );
        assert_eq!(
            s,
            Step::Registered {
                invite_code: "CODE".into()
            }
        );
        let mut moved = inv.clone();
        assert!(apply(&mut moved, &s, T0 + 5, 100));
        assert_eq!(moved.state, InvitationState::Registered);
        assert_eq!(moved.invite_code.as_deref(), Some("CODE"));

        assert_eq!(step(&inv, Observed::default()), Step::Register);
        // Registered without an invite code yet, or retired: register (again).
        for p in [
            person(UserStatus::Registered, None),
            person(UserStatus::Retired, Some("OLD")),
        ] {
            let seen = Observed {
                person: Some(&p),
                command: None,
            };
            assert_eq!(step(&inv, seen), Step::Register);
        }
        let mut same = inv.clone();
        assert!(!apply(&mut same, &Step::Register, T0 + 5, 100));
        assert_eq!(same, inv);
    }

    #[test]
    fn an_associated_person_ends_any_open_invitation() {
        let associated = person(UserStatus::Associated, Some("CODE"));
        for state in [
            InvitationState::Registering,
            InvitationState::Registered,
            InvitationState::Queued,
            InvitationState::Delivered,
        ] {
            let inv = invitation(state);
            let s = step(
                &inv,
                Observed {
                    person: Some(&associated),
                    command: None,
                },
            );
            assert_eq!(
                s,
                Step::Associated {
                    invitation_result: None
                },
                "{state}"
            );
            let mut moved = inv.clone();
            assert!(apply(&mut moved, &s, T0 + 5, 100));
            assert_eq!(moved.state, InvitationState::Associated);
            assert_eq!(moved.next_action_at, i64::MAX);
            assert_eq!(moved.updated_at, T0 + 5);
        }
    }

    #[test]
    fn association_keeps_the_devices_answer() {
        let associated = person(UserStatus::Associated, None);
        let inv = queued();
        let c = answer(
            Some(CommandStatus::Acknowledged),
            Some("Acknowledged"),
            true,
        );
        let s = step(
            &inv,
            Observed {
                person: Some(&associated),
                command: Some(&c),
            },
        );
        assert_eq!(
            s,
            Step::Associated {
                invitation_result: Some("Acknowledged".into())
            }
        );
    }

    #[test]
    fn terminal_invitations_never_move() {
        let associated = person(UserStatus::Associated, None);
        for state in [
            InvitationState::Associated,
            InvitationState::Failed,
            InvitationState::Retired,
        ] {
            let seen = Observed {
                person: Some(&associated),
                command: None,
            };
            assert_eq!(step(&invitation(state), seen), Step::Stay, "{state}");
        }
    }

    #[test]
    fn the_devices_answer_moves_a_queued_invitation() {
        let inv = queued();
        let ack = answer(
            Some(CommandStatus::Acknowledged),
            Some("Acknowledged"),
            true,
        );
        let s = on_device(&inv, &ack);
        assert_eq!(
            s,
            Step::Delivered {
                invitation_result: Some("Acknowledged".into())
            }
        );
        let mut moved = inv.clone();
        assert!(apply(&mut moved, &s, T0 + 20, 3_600_000));
        assert_eq!(moved.state, InvitationState::Delivered);
        assert_eq!(moved.next_action_at, T0 + 20 + 3_600_000);

        let bare_ack = answer(Some(CommandStatus::Acknowledged), None, true);
        assert_eq!(
            on_device(&inv, &bare_ack),
            Step::Delivered {
                invitation_result: None
            }
        );

        let bad_url = answer(
            Some(CommandStatus::Acknowledged),
            Some("InvalidInvitationURL"),
            true,
        );
        let s = on_device(&inv, &bad_url);
        assert_eq!(
            s,
            Step::Failed {
                reason: "device answered InvitationResult InvalidInvitationURL".into(),
                invitation_result: Some("InvalidInvitationURL".into()),
            }
        );
        let mut moved = inv.clone();
        apply(&mut moved, &s, T0 + 20, 100);
        assert_eq!(moved.state, InvitationState::Failed);
        assert_eq!(
            moved.invitation_result.as_deref(),
            Some("InvalidInvitationURL")
        );

        for st in [CommandStatus::Error, CommandStatus::CommandFormatError] {
            let c = answer(Some(st), None, true);
            assert_eq!(
                on_device(&inv, &c),
                Step::Failed {
                    reason: format!("device answered {}", st.as_str()),
                    invitation_result: None,
                }
            );
        }
    }

    #[test]
    fn not_now_keeps_it_queued_once_per_answer() {
        let inv = queued();
        let c = answer(Some(CommandStatus::NotNow), None, true);
        let s = on_device(&inv, &c);
        assert_eq!(s, Step::NotNow);
        let mut moved = inv.clone();
        assert!(apply(&mut moved, &s, T0 + 50, 100));
        assert_eq!(moved.state, InvitationState::Queued);
        assert_eq!(moved.reason.as_deref(), Some(NOT_NOW_REASON));
        // The same answer, seen again after the invitation was updated, is not news.
        assert_eq!(on_device(&moved, &c), Step::Stay);
    }

    #[test]
    fn a_cleared_command_fails_the_invitation() {
        let inv = queued();
        for status in [None, Some(CommandStatus::NotNow)] {
            let c = answer(status, None, false);
            assert!(
                matches!(on_device(&inv, &c), Step::Failed { reason, .. } if reason.contains("enrolled again"))
            );
        }
        // An answer kept for the record after a re-enrollment still counts.
        let c = answer(Some(CommandStatus::Acknowledged), None, false);
        assert!(matches!(on_device(&inv, &c), Step::Delivered { .. }));
    }

    #[test]
    fn unanswered_stale_or_foreign_commands_change_nothing() {
        let inv = queued();
        assert_eq!(on_device(&inv, &answer(None, None, true)), Step::Stay);
        let mut old = answer(Some(CommandStatus::Acknowledged), None, true);
        old.updated_at = Some(T0 - 100);
        assert_eq!(on_device(&inv, &old), Step::Stay);
        let mut other = answer(Some(CommandStatus::Acknowledged), None, true);
        other.command_uuid = CommandUuid::from("CMD-0");
        assert_eq!(on_device(&inv, &other), Step::Stay);
        assert_eq!(step(&inv, Observed::default()), Step::Stay);
        // A registered or delivered invitation ignores device answers.
        let mut delivered = queued();
        delivered.state = InvitationState::Delivered;
        let ack = answer(Some(CommandStatus::Error), None, true);
        assert_eq!(on_device(&delivered, &ack), Step::Stay);
    }

    fn of(state: InvitationState, id: &str, at: i64, enrollment: Option<&str>) -> Invitation {
        let mut inv = invitation(state);
        inv.id = InvitationId::from(id);
        inv.created_at = at;
        inv.enrollment_id = enrollment.map(EnrollmentId::from);
        inv
    }

    #[test]
    fn a_person_is_invited_once_per_enrollment_and_never_after_retirement_unasked() {
        use InvitationState::*;
        let phone = EnrollmentId::from("IPHONE");
        let mac = EnrollmentId::from("MAC");
        // Nobody yet: new; the mirror's retirement alone also skips.
        assert_eq!(admit(&[], Some(&phone), false, false), Admission::New);
        assert_eq!(
            admit(&[], Some(&phone), true, false),
            Admission::Skipped(Skip::Retired, None)
        );
        assert_eq!(admit(&[], Some(&phone), true, true), Admission::New);
        // In progress on the same enrollment: that one; another device: new.
        let open = [of(Queued, "a", T0, Some("IPHONE"))];
        assert_eq!(
            admit(&open, Some(&phone), false, false),
            Admission::InProgress(&open[0])
        );
        assert_eq!(admit(&open, Some(&mac), false, false), Admission::New);
        assert_eq!(admit(&open, None, false, false), Admission::New);
        // Associated on any device: skipped.
        let done = [of(Associated, "a", T0, Some("IPHONE"))];
        assert_eq!(
            admit(&done, Some(&mac), false, false),
            Admission::Skipped(Skip::Associated, Some(&done[0]))
        );
        // Failed on this enrollment: skipped (resend it); on another: new.
        let failed = [of(Failed, "a", T0, Some("IPHONE"))];
        assert_eq!(
            admit(&failed, Some(&phone), false, false),
            Admission::Skipped(Skip::Failed, Some(&failed[0]))
        );
        assert_eq!(admit(&failed, Some(&mac), false, false), Admission::New);
        // Retired (the newest): skipped unless asked; then new, even on the same device.
        let retired = [
            of(Associated, "a", T0, Some("IPHONE")),
            of(Retired, "b", T0 + 1, Some("IPHONE")),
        ];
        assert_eq!(
            admit(&retired, Some(&phone), false, false),
            Admission::Skipped(Skip::Retired, Some(&retired[1]))
        );
        assert_eq!(admit(&retired, Some(&phone), false, true), Admission::New);
        // Re-invited after retirement: the new invitation is the one in progress, and the
        // association before the retirement no longer counts.
        let again = [
            of(Associated, "a", T0, Some("IPHONE")),
            of(Retired, "b", T0 + 1, Some("IPHONE")),
            of(Registering, "c", T0 + 2, Some("IPHONE")),
        ];
        assert_eq!(
            admit(&again, Some(&phone), true, false),
            Admission::InProgress(&again[2])
        );
        assert_eq!(admit(&again, Some(&mac), true, false), Admission::New);
    }

    #[test]
    fn an_attempts_command_uuid_never_changes() {
        // Pinned: an instance that takes over a delivery, even one of another version,
        // must derive the UUID the dead one queued.
        let id = InvitationId::from("00000000-0000-4000-8000-000000000001");
        assert_eq!(
            invite_command_uuid(&id, 1).as_str(),
            "3176F613-D16C-525E-A164-BB2B7A107A29"
        );
        assert_eq!(
            invite_command_uuid(&id, 2).as_str(),
            "FB7D3204-6659-581A-A8C8-E5A81AD59757"
        );
    }
}
