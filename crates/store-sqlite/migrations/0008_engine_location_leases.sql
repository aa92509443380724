-- Several MDM instances run engines on one database: each location's engine work (sync,
-- registrations, deliveries) is done by the instance holding its lease, renewed while it
-- works; a crashed holder's locations are taken over when the lease runs out.
ALTER TABLE engine_locations ADD COLUMN lease_owner TEXT;
ALTER TABLE engine_locations ADD COLUMN lease_until INTEGER;
