-- One current certificate per device: a re-enrollment with a new certificate replaces the
-- binding, and the old certificate never works for that device again. Replaced bindings
-- stay as history for the admin API. A certificate belongs to one device, ever.
ALTER TABLE mdm_cert_auth ADD COLUMN replaced_at BIGINT;
ALTER TABLE mdm_cert_auth ADD COLUMN subject TEXT;
-- Before this version a device could hold several certificates at once, and a race could
-- bind one certificate to two devices: keep the first binding of each certificate and the
-- newest certificate of each device as current.
DELETE FROM mdm_cert_auth
 WHERE EXISTS (SELECT 1 FROM mdm_cert_auth o
                WHERE o.sha256 = mdm_cert_auth.sha256
                  AND (o.created_at < mdm_cert_auth.created_at
                       OR (o.created_at = mdm_cert_auth.created_at AND o.device_id < mdm_cert_auth.device_id)));
UPDATE mdm_cert_auth SET replaced_at = created_at
 WHERE EXISTS (SELECT 1 FROM mdm_cert_auth n
                WHERE n.device_id = mdm_cert_auth.device_id
                  AND (n.created_at > mdm_cert_auth.created_at
                       OR (n.created_at = mdm_cert_auth.created_at AND n.sha256 > mdm_cert_auth.sha256)));
CREATE UNIQUE INDEX mdm_cert_auth_current ON mdm_cert_auth(device_id) WHERE replaced_at IS NULL;
CREATE UNIQUE INDEX mdm_cert_auth_one_device ON mdm_cert_auth(sha256);
DROP INDEX mdm_cert_auth_sha;
