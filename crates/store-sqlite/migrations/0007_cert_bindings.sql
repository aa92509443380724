-- One current certificate per device: a re-enrollment with a new certificate replaces the
-- binding, and the old certificate stops working for that device. Replaced bindings stay
-- as history for the admin API.
ALTER TABLE mdm_cert_auth ADD COLUMN replaced_at INTEGER;
ALTER TABLE mdm_cert_auth ADD COLUMN subject TEXT;
UPDATE mdm_cert_auth SET replaced_at = created_at
 WHERE EXISTS (SELECT 1 FROM mdm_cert_auth n
                WHERE n.device_id = mdm_cert_auth.device_id
                  AND (n.created_at > mdm_cert_auth.created_at
                       OR (n.created_at = mdm_cert_auth.created_at AND n.sha256 > mdm_cert_auth.sha256)));
CREATE UNIQUE INDEX mdm_cert_auth_current ON mdm_cert_auth(device_id) WHERE replaced_at IS NULL;
