-- Identity (issue 3): each refresh token row also records the access token issued with it, so
-- logout, refresh-token reuse, role changes and erasure can revoke the access tokens still alive.

ALTER TABLE refresh_tokens
    ADD COLUMN access_jti        text,
    ADD COLUMN access_expires_at timestamptz;

-- The live access tokens of a user: WHERE user_id = $1 AND access_expires_at > now().
CREATE INDEX refresh_tokens_user_access_idx ON refresh_tokens (user_id, access_expires_at);

-- Admin listing pages through users by id (UUIDv7, time-ordered); erased users are left out.
CREATE INDEX users_live_id_idx ON users (id) WHERE erased_at IS NULL;
