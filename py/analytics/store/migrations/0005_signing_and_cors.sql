-- Signing secrets as integrators use them, their rotation, and publishable (browser) keys.
--
-- `signing_secret` holds the HMAC key bytes. Keys created before this migration hold 32 raw
-- random bytes that were printed hex-encoded (format 'hex': the HMAC key is those bytes, or
-- the printed hex text, both accepted); keys created since hold the UTF-8 bytes of the
-- printed `ansk_...` secret (format 'text': the secret as printed is the HMAC key).
ALTER TABLE api_keys ADD COLUMN signing_format text
    CHECK (signing_format IN ('hex', 'text'));
UPDATE api_keys SET signing_format = 'hex' WHERE signing_secret IS NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_signing_format
    CHECK ((signing_secret IS NULL) = (signing_format IS NULL));

-- Rotation: `keys rotate-signing` moves the current secret here and sets a new one; both
-- are accepted until `keys retire-signing` clears it or `previous_signing_expires_at`.
ALTER TABLE api_keys
    ADD COLUMN previous_signing_secret bytea,
    ADD COLUMN previous_signing_format text CHECK (previous_signing_format IN ('hex', 'text')),
    ADD COLUMN previous_signing_expires_at timestamptz;

-- Publishable keys: write-only, never signing, usable from browsers whose Origin is listed.
ALTER TABLE api_keys
    ADD COLUMN publishable boolean NOT NULL DEFAULT false,
    ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD CONSTRAINT api_keys_publishable
    CHECK (NOT publishable OR (signing_secret IS NULL AND scopes = '{write}'
                               AND cardinality(allowed_origins) > 0));
-- A preflight carries no key, only its Origin: is it listed by any active publishable key?
CREATE INDEX api_keys_allowed_origins ON api_keys USING gin (allowed_origins)
    WHERE publishable AND revoked_at IS NULL;
