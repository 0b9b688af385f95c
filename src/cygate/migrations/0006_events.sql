-- Events (issue 7, part 5): the relay's wake-up, consumer idempotency, and two read models.

-- NOTE: a statement-level trigger: NOTIFY is sent at COMMIT (never for a rolled-back insert) and
-- PostgreSQL folds identical notifications of one transaction into one, so a transaction that
-- emits many events wakes the relay once. The payload is empty: the relay reads the table.
CREATE FUNCTION cygate_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cygate_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION cygate_outbox_notify();

-- Outbox rows already published, for the retention clean-up.
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- What each consumer applied, written in the transaction of its effect: a redelivered event
-- (relay crash between XADD and UPDATE, a reclaimed message) finds its row and is skipped.
CREATE TABLE processed_events (
    consumer    text NOT NULL,
    event_id    bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_applied_idx ON processed_events (applied_at);

-- The per-user order summary (CQRS read model), fed by order.* events only.
CREATE TABLE order_summaries (
    user_id            uuid PRIMARY KEY,
    orders_count       integer NOT NULL DEFAULT 0,
    open_orders        integer NOT NULL DEFAULT 0,
    paid_orders        integer NOT NULL DEFAULT 0,
    shipped_orders     integer NOT NULL DEFAULT 0,
    cancelled_orders   integer NOT NULL DEFAULT 0,
    expired_orders     integer NOT NULL DEFAULT 0,
    total_spent_cents  bigint NOT NULL DEFAULT 0,
    last_order_at      timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Analytics: events per UTC day and type, with the money they carry (amount or total).
CREATE TABLE analytics_daily (
    day           date NOT NULL,
    event_type    text NOT NULL,
    events        bigint NOT NULL DEFAULT 0,
    amount_cents  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, event_type)
);
