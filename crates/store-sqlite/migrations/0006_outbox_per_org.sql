-- Notifications are claimed per organisation, in turn, so that one organisation's slow
-- endpoint or backlog cannot delay another's: its due notifications, and the loose scan of
-- organisations that have pending ones.
CREATE INDEX outbox_org_due ON outbox(org_id, next_attempt_at, id) WHERE state = 'pending';
