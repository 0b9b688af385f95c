-- Multi-factor sign-in: TOTP enrolments, recovery codes, the second step of a login, and the
-- authentication methods (RFC 8176 amr) of each session, carried through refresh.

-- One TOTP enrolment per user: pending until a first code verifies it (activated_at set).
CREATE TABLE mfa_totp (
    user_id        uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret_sealed  bytea NOT NULL,         -- AES-256-GCM under the MFA key; never the secret
    key_id         text NOT NULL,          -- which MFA key sealed it
    activated_at   timestamptz,
    last_step      bigint,                 -- the last 30 s step whose code was accepted
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Recovery codes: a keyed hash each, usable once.
CREATE TABLE mfa_recovery_codes (
    user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A password login of an account with MFA active: the mfa_token (its SHA-256) that the second
-- step presents with a code; short-lived, single use.
CREATE TABLE mfa_challenges (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX mfa_challenges_user_idx ON mfa_challenges (user_id);

-- Every session so far began with a password.
ALTER TABLE refresh_tokens ADD COLUMN amr text[] NOT NULL DEFAULT ARRAY['pwd']::text[];
