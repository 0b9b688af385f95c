-- Payments, one round trip a step (docs/payments.md, "Round trips"): the Idempotency-Key's
-- claim with the new attempt's checks and insert, the settlement with its outbox events and the
-- key's record, and a webhook, each one statement. Every PostgreSQL round trip costs the
-- gateway's worker a write, a wake-up and a read; a payment and its webhook took 29 of them, and
-- take 3.
--
-- NOTE on the contract (cygate.services.payments.store is the only caller, and the orders
-- service's mark_paid for cygate_mark_paid):
-- * each function is one statement: called outside a transaction it is one (committed when
--   its answer comes back), inside one it is part of it;
-- * locks are taken in the order every writer of a payment takes them: the order's row, then
--   the payment's (no deadlocks);
-- * every column reference is qualified: the OUT parameters share the columns' names.

-- The payment state machine's edges: which outcome may replace which status (anything else is
-- a no-op: a duplicate, late or out-of-order report). ``captured`` is final, and the
-- processor's word that money moved wins over what the gateway concluded (declined, failed).
-- Monotone: an outcome that may not replace a status may not replace any later one either.
CREATE FUNCTION cygate_payment_may_become(p_status text, p_outcome text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_status = 'initiated' AND p_outcome IN ('captured', 'declined', 'failed')
        OR p_status IN ('declined', 'failed') AND p_outcome = 'captured'
$$;

-- The orders service's transition pending → paid, with its order.paid event, in the caller's
-- transaction (cygate.services.orders.store.mark_paid calls it, and so does the payments state
-- machine below). True when this call made the order paid; false when there is no such order
-- or it is not pending (orders/states.py: only pending → paid). The order's row stays locked
-- until the caller's transaction ends.
CREATE FUNCTION cygate_mark_paid(p_order_id uuid, p_payment_id uuid, p_traceparent text)
    RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    o record;
BEGIN
    SELECT x.user_id, x.status, x.total_cents, x.currency::text AS currency INTO o
      FROM orders x WHERE x.id = p_order_id FOR UPDATE;
    IF NOT FOUND OR o.status <> 'pending' THEN
        RETURN false;
    END IF;
    UPDATE orders x SET status = 'paid', version = x.version + 1, updated_at = now()
     WHERE x.id = p_order_id;
    INSERT INTO outbox (aggregate, aggregate_id, event_type, payload, traceparent)
    VALUES ('order', p_order_id::text, 'order.paid', jsonb_build_object(
        'order_id', p_order_id, 'user_id', o.user_id, 'payment_id', p_payment_id,
        'amount_cents', o.total_cents, 'currency', o.currency), p_traceparent);
    RETURN true;
END
$$;

-- The only writer of a payment's status (store.apply_outcome): lock the order, then the
-- payment; apply p_outcome if the state machine allows it, with payment.<outcome> and, for a
-- capture, the order's pending → paid. Returns the payment as it now is (id NULL: no such
-- payment) and what happened: changed (this call applied it); paid_by (a capture refused
-- because another attempt of the order is captured: a refund is due); order_status (as locked)
-- and order_paid (this call made the order paid; a capture that did not: a refund is due).
CREATE FUNCTION cygate_apply_payment_outcome(
    p_payment_id uuid,
    p_outcome text,
    p_ref text,
    p_traceparent text,
    OUT id uuid,
    OUT order_id uuid,
    OUT attempt integer,
    OUT status text,
    OUT amount_cents bigint,
    OUT currency text,
    OUT processor_key text,
    OUT processor_ref text,
    OUT changed boolean,
    OUT paid_by uuid,
    OUT order_status text,
    OUT order_paid boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_order uuid;
    v_user uuid;
BEGIN
    changed := false;
    order_paid := false;
    IF p_outcome IS NULL OR p_outcome NOT IN ('captured', 'declined', 'failed') THEN
        RAISE EXCEPTION 'not a payment outcome: %', p_outcome
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.order_id INTO v_order FROM payments p WHERE p.id = p_payment_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT x.status, x.user_id INTO order_status, v_user
      FROM orders x WHERE x.id = v_order FOR UPDATE;
    SELECT p.id, p.order_id, p.attempt, p.status, p.amount_cents, p.currency::text,
           p.processor_key, p.processor_ref
      INTO id, order_id, attempt, status, amount_cents, currency, processor_key, processor_ref
      FROM payments p WHERE p.id = p_payment_id FOR UPDATE;
    IF NOT cygate_payment_may_become(status, p_outcome) THEN
        RETURN;  -- already decided
    END IF;
    IF p_outcome = 'captured' THEN
        -- NOTE: a second capture for one order (only possible if a processor charged an
        -- attempt after saying it had no record of it). The unique index forbids two captured
        -- rows: leave this one as it is; the caller says loudly that a refund is due.
        SELECT p.id INTO paid_by FROM payments p
         WHERE p.order_id = v_order AND p.status = 'captured' AND p.id <> p_payment_id;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    UPDATE payments p SET status = p_outcome, processor_ref = coalesce(p_ref, p.processor_ref),
           updated_at = now()
     WHERE p.id = p_payment_id;
    status := p_outcome;
    processor_ref := coalesce(p_ref, processor_ref);
    changed := true;
    INSERT INTO outbox (aggregate, aggregate_id, event_type, payload, traceparent)
    VALUES ('payment', p_payment_id::text, 'payment.' || p_outcome, jsonb_build_object(
        'payment_id', p_payment_id, 'order_id', v_order, 'user_id', v_user,
        'amount_cents', amount_cents, 'currency', currency, 'attempt', attempt), p_traceparent);
    IF p_outcome = 'captured' THEN
        order_paid := cygate_mark_paid(v_order, p_payment_id, p_traceparent);
    END IF;
END
$$;

-- The synchronous path's settlement (store.settle): apply p_outcome (NULL: the processor's
-- answer is unknown, only read the payment: a webhook may have settled it meanwhile); when the
-- payment is then captured or declined, build the 201's body (what orjson.dumps of
-- PaymentRow.public() gives; a test compares them byte for byte) and, with p_key, record it
-- under the caller's Idempotency-Key claim (p_user_id, p_key, p_claim) in the same
-- transaction. recorded = false: the claim was taken over; the money state stands all the same.
CREATE FUNCTION cygate_settle_payment(
    p_payment_id uuid,
    p_outcome text,
    p_ref text,
    p_traceparent text,
    p_user_id uuid,
    p_key text,
    p_claim uuid,
    p_headers jsonb,
    OUT id uuid,
    OUT order_id uuid,
    OUT attempt integer,
    OUT status text,
    OUT amount_cents bigint,
    OUT currency text,
    OUT processor_key text,
    OUT processor_ref text,
    OUT changed boolean,
    OUT paid_by uuid,
    OUT order_status text,
    OUT order_paid boolean,
    OUT body bytea,
    OUT recorded boolean
) LANGUAGE plpgsql AS $$
BEGIN
    IF p_outcome IS NULL THEN
        SELECT p.id, p.order_id, p.attempt, p.status, p.amount_cents, p.currency::text,
               p.processor_key, p.processor_ref, false, false
          INTO id, order_id, attempt, status, amount_cents, currency, processor_key,
               processor_ref, changed, order_paid
          FROM payments p WHERE p.id = p_payment_id;
    ELSE
        SELECT a.id, a.order_id, a.attempt, a.status, a.amount_cents, a.currency,
               a.processor_key, a.processor_ref, a.changed, a.paid_by, a.order_status,
               a.order_paid
          INTO id, order_id, attempt, status, amount_cents, currency, processor_key,
               processor_ref, changed, paid_by, order_status, order_paid
          FROM cygate_apply_payment_outcome(p_payment_id, p_outcome, p_ref, p_traceparent) a;
    END IF;
    IF id IS NULL OR status NOT IN ('captured', 'declined') THEN
        RETURN;
    END IF;
    body := convert_to(
        '{"id":"' || id || '","order_id":"' || order_id || '","status":' || to_json(status)
        || ',"amount_cents":' || amount_cents || ',"currency":' || to_json(currency)
        || ',"attempt":' || attempt || '}',
        'UTF8');
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys k
           SET state = 'done', response_status = 201, response_headers = p_headers,
               response_body = body
         WHERE k.user_id = p_user_id AND k.key = p_key AND k.claim = p_claim
           AND k.state = 'in_flight';
        recorded := FOUND;
    END IF;
END
$$;

-- A new attempt for an order (store.new_attempt), called outside a transaction: the attempt is
-- committed when the answer comes back, before the processor is called. With p_claim, the
-- request's Idempotency-Key (p_request_key) is claimed first in the same statement
-- (cygate_claim_key, migration 0012, the one claim statement: p_method, p_path, p_hash, p_claim,
-- p_key_ttl, p_in_flight are its parameters), so claim and attempt commit together; not won:
-- verdict 'held' and the key's row (held_*; held_state 'in_flight' with held_hash NULL while
-- another transaction holds the key's advisory lock), nothing written. Then, under the order's
-- lock, in this order: verdict 'missing' (no such order, or another user's: BOLA, the caller
-- answers 404); 'settled' (the attempt this Idempotency-Key started is captured or declined:
-- the processor's answer to that key stands, it is returned); 'not_pending' (order_status says
-- what it is); 'nothing_to_charge' (a total of 0); 'open' (the order's last attempt is still
-- initiated: returned with its age, nothing else written); else 'created': attempt n + 1,
-- initiated, id p_payment_id, amount the order's total, processor key 'cygate-pay-<id>'.
CREATE FUNCTION cygate_new_payment_attempt(
    p_order_id uuid,
    p_user_id uuid,
    p_request_key text,
    p_payment_id uuid,
    p_method text,
    p_path text,
    p_hash bytea,
    p_claim uuid,
    p_key_ttl double precision,
    p_in_flight double precision,
    OUT verdict text,
    OUT order_status text,
    OUT id uuid,
    OUT order_id uuid,
    OUT attempt integer,
    OUT status text,
    OUT amount_cents bigint,
    OUT currency text,
    OUT processor_key text,
    OUT processor_ref text,
    OUT age double precision,
    OUT held_state text,
    OUT held_hash bytea,
    OUT held_status integer,
    OUT held_headers jsonb,
    OUT held_body bytea
) LANGUAGE plpgsql AS $$
DECLARE
    o record;
    r record;
    c record;
    v_found boolean;
BEGIN
    -- NOTE: the order's lock before the key's row, as the settlement takes them (it records the
    -- response under the key after applying the outcome under the order's lock): no deadlock.
    -- A request under a key another transaction holds uncommitted (an order being placed
    -- under it: cygate_claim_place_order) does not wait on it: 409 in flight at once.
    IF p_claim IS NOT NULL
       AND NOT pg_try_advisory_xact_lock(hashtext(p_user_id::text), hashtext(p_request_key)) THEN
        verdict := 'held';
        held_state := 'in_flight';
        RETURN;
    END IF;
    SELECT x.user_id, x.status, x.total_cents, x.currency::text AS currency INTO o
      FROM orders x WHERE x.id = p_order_id FOR UPDATE;
    v_found := FOUND;
    IF p_claim IS NOT NULL THEN
        SELECT * INTO c FROM cygate_claim_key(p_user_id, p_request_key, p_method, p_path, p_hash,
                                             p_claim, p_key_ttl, p_in_flight);
        IF NOT c.won THEN
            verdict := 'held';
            held_state := c.held_state;
            held_hash := c.held_hash;
            held_status := c.held_status;
            held_headers := c.held_headers;
            held_body := c.held_body;
            RETURN;
        END IF;
    END IF;
    IF NOT v_found OR o.user_id IS DISTINCT FROM p_user_id THEN
        verdict := 'missing';
        RETURN;
    END IF;
    order_status := o.status;
    IF p_request_key IS NOT NULL THEN
        SELECT p.id, p.order_id, p.attempt, p.status, p.amount_cents, p.currency::text AS cur,
               p.processor_key, p.processor_ref,
               extract(epoch FROM now() - p.created_at)::float8 AS age_s INTO r
          FROM payments p WHERE p.order_id = p_order_id AND p.request_key = p_request_key
         ORDER BY p.attempt DESC LIMIT 1;
        -- initiated: it is the order's open attempt, settled below; failed: the processor never
        -- charged it, so a new attempt is safe.
        IF FOUND AND r.status IN ('captured', 'declined') THEN
            verdict := 'settled';
            id := r.id; order_id := r.order_id; attempt := r.attempt; status := r.status;
            amount_cents := r.amount_cents; currency := r.cur; processor_key := r.processor_key;
            processor_ref := r.processor_ref; age := r.age_s;
            RETURN;
        END IF;
    END IF;
    IF o.status <> 'pending' THEN
        verdict := 'not_pending';
        RETURN;
    END IF;
    IF o.total_cents <= 0 THEN
        verdict := 'nothing_to_charge';  -- products may be free; a processor charges > 0 only
        RETURN;
    END IF;
    SELECT p.id, p.order_id, p.attempt, p.status, p.amount_cents, p.currency::text AS cur,
           p.processor_key, p.processor_ref,
           extract(epoch FROM now() - p.created_at)::float8 AS age_s INTO r
      FROM payments p WHERE p.order_id = p_order_id ORDER BY p.attempt DESC LIMIT 1;
    IF FOUND AND r.status = 'initiated' THEN
        verdict := 'open';
        id := r.id; order_id := r.order_id; attempt := r.attempt; status := r.status;
        amount_cents := r.amount_cents; currency := r.cur; processor_key := r.processor_key;
        processor_ref := r.processor_ref; age := r.age_s;
        RETURN;
    END IF;
    verdict := 'created';
    id := p_payment_id;
    order_id := p_order_id;
    attempt := CASE WHEN FOUND THEN r.attempt + 1 ELSE 1 END;
    status := 'initiated';
    amount_cents := o.total_cents;
    currency := o.currency;
    -- NOTE: the processor's idempotency key is derived from the attempt's id: a retry of the
    -- same attempt (recovery, a resent request) can never charge twice, and a new attempt
    -- (after a decline or a definite failure) gets a new key.
    processor_key := 'cygate-pay-' || p_payment_id;
    age := 0;
    INSERT INTO payments (id, order_id, attempt, status, amount_cents, currency, processor_key,
                          request_key)
    VALUES (p_payment_id, p_order_id, attempt, 'initiated', amount_cents, currency,
            processor_key, p_request_key);
END
$$;

-- A processor's webhook (store.webhook), after its signature is checked: the event id goes into
-- payment_events (ON CONFLICT DO NOTHING: a duplicate delivery does nothing) and, when it is
-- new, its outcome (p_outcome; NULL for an event kind that changes nothing) is applied in the
-- same transaction. known = false: no payment has that processor key (nothing written).
-- PERF: the usual webhook comes after the synchronous answer settled the payment; an outcome the
-- payment's status no longer allows (cygate_payment_may_become is monotone: it never will
-- again) changes nothing, so such an event is only recorded: no order lock, no state machine.
-- That record takes a key-share lock on the payment (the foreign key) and then waits for
-- nothing, so it cannot close a cycle with a holder of the order's lock. Every other event
-- locks the order first, as everywhere, before its row's key-share lock on the payment: taken
-- the other way round it would deadlock with the synchronous path (order, then payment).
CREATE FUNCTION cygate_payment_webhook(
    p_event_id text,
    p_key text,
    p_kind text,
    p_payload jsonb,
    p_outcome text,
    p_ref text,
    p_traceparent text,
    OUT known boolean,
    OUT inserted boolean,
    OUT id uuid,
    OUT order_id uuid,
    OUT attempt integer,
    OUT status text,
    OUT amount_cents bigint,
    OUT currency text,
    OUT processor_key text,
    OUT processor_ref text,
    OUT changed boolean,
    OUT paid_by uuid,
    OUT order_status text,
    OUT order_paid boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_order uuid;
    v_status text;
BEGIN
    known := false;
    inserted := false;
    changed := false;
    order_paid := false;
    SELECT p.id, p.order_id, p.status INTO v_id, v_order, v_status
      FROM payments p WHERE p.processor_key = p_key;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    known := true;
    id := v_id;
    order_id := v_order;
    status := v_status;
    IF p_outcome IS NULL OR NOT cygate_payment_may_become(v_status, p_outcome) THEN
        INSERT INTO payment_events (event_id, payment_id, kind, payload)
        VALUES (p_event_id, v_id, p_kind, p_payload) ON CONFLICT (event_id) DO NOTHING;
        inserted := FOUND;
        RETURN;
    END IF;
    PERFORM 1 FROM orders x WHERE x.id = v_order FOR UPDATE;
    INSERT INTO payment_events (event_id, payment_id, kind, payload)
    VALUES (p_event_id, v_id, p_kind, p_payload) ON CONFLICT (event_id) DO NOTHING;
    inserted := FOUND;
    IF NOT inserted THEN
        RETURN;  -- a duplicate delivery
    END IF;
    SELECT a.attempt, a.status, a.amount_cents, a.currency, a.processor_key, a.processor_ref,
           a.changed, a.paid_by, a.order_status, a.order_paid
      INTO attempt, status, amount_cents, currency, processor_key, processor_ref, changed,
           paid_by, order_status, order_paid
      FROM cygate_apply_payment_outcome(v_id, p_outcome, p_ref, p_traceparent) a;
END
$$;
