-- Consent records: one row per decision of a user about a purpose, kept as history; the
-- newest row of a (user, purpose) is the current answer.
CREATE TABLE consents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose IN ('analytics', 'marketing')),
    granted     boolean NOT NULL,
    source      text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX consents_user_purpose_idx ON consents (user_id, purpose, id);

-- Retention: the audit log is trimmed by age.
CREATE INDEX audit_log_at_idx ON audit_log (at);
