-- Order placement claims its Idempotency-Key in the order's own transaction: one transaction and
-- three round trips per order (BEGIN, the call, COMMIT) instead of two transactions and four
-- (the claim autocommitted, then BEGIN, the call, COMMIT).

-- The atomic claim of an Idempotency-Key (cygate.services.idempotency is the only writer of
-- claims: Idempotency.claim calls this on its own, autocommitted; cygate_claim_place_order calls
-- it inside the order's transaction). won = true: the key is this claim's (p_claim), new, or
-- taken over because it had expired or its in-flight claim with the same fingerprint was older
-- than p_in_flight seconds. won = false: the key's row as it is (held_*), for the caller to
-- answer (replay, 409 in flight, 422 another fingerprint); held_state NULL: the key changed
-- hands five times in a row.
CREATE FUNCTION cygate_claim_key(
    p_user_id uuid,
    p_key text,
    p_method text,
    p_path text,
    p_hash bytea,
    p_claim uuid,
    p_ttl double precision,
    p_in_flight double precision,
    OUT won boolean,
    OUT held_state text,
    OUT held_hash bytea,
    OUT held_status integer,
    OUT held_headers jsonb,
    OUT held_body bytea
) LANGUAGE plpgsql AS $$
BEGIN
    won := false;
    FOR attempt IN 1 .. 5 LOOP
        -- NOTE: across processes exactly one INSERT ... ON CONFLICT gets a row back.
        INSERT INTO idempotency_keys AS k
               (user_id, key, method, path, request_hash, claim, expires_at)
        VALUES (p_user_id, p_key, p_method, p_path, p_hash, p_claim,
                now() + make_interval(secs => p_ttl))
        ON CONFLICT (user_id, key) DO UPDATE
           SET method = EXCLUDED.method, path = EXCLUDED.path,
               request_hash = EXCLUDED.request_hash, state = 'in_flight', claim = EXCLUDED.claim,
               response_status = NULL, response_headers = NULL, response_body = NULL,
               created_at = now(), expires_at = EXCLUDED.expires_at
         WHERE k.expires_at <= now()
            OR (k.state = 'in_flight' AND k.request_hash = EXCLUDED.request_hash
                AND k.created_at <= now() - make_interval(secs => p_in_flight));
        IF FOUND THEN
            won := true;
            RETURN;
        END IF;
        SELECT k.state, k.request_hash, k.response_status, k.response_headers, k.response_body
          INTO held_state, held_hash, held_status, held_headers, held_body
          FROM idempotency_keys k
         WHERE k.user_id = p_user_id AND k.key = p_key AND k.expires_at > now();
        IF FOUND THEN
            RETURN;
        END IF;
        -- released or expired between the two statements: claim again
    END LOOP;
END
$$;

-- NOTE on the contract (cygate.services.orders.store.place is the only caller): the claim of
-- cygate_claim_key, then cygate_place_order (migration 0007) recording its 201 on that claim,
-- in the caller's transaction. claimed = false: nothing was written, held_* says why (the
-- key's row, or held_state 'in_flight' with held_hash NULL when another transaction is placing
-- an order under this key right now). A refusal (placed = false) leaves the claim written in
-- the caller's transaction, which records the refusal on it before committing.
--
-- NOTE: the claim is not visible to other transactions before the commit. A request with the
-- same key meanwhile must not wait on it (409 at once, as for a committed claim in flight):
-- the transaction advisory lock of (user, key), tried without waiting, tells it the key is
-- taken. Two-int form: a lock space apart from the app's bigint advisory locks. Two (user, key)
-- pairs whose hashes collide would only make one of them answer 409 (retry) while the other
-- is being placed.
CREATE FUNCTION cygate_claim_place_order(
    p_order_id uuid,
    p_user_id uuid,
    p_ids uuid[],
    p_qtys integer[],
    p_address text,
    p_ttl double precision,
    p_key text,
    p_claim uuid,
    p_headers jsonb,
    p_method text,
    p_path text,
    p_hash bytea,
    p_key_ttl double precision,
    p_in_flight double precision,
    OUT claimed boolean,
    OUT placed boolean,
    OUT body bytea,
    OUT found_ids uuid[],
    OUT stocks integer[],
    OUT currencies text[],
    OUT held_state text,
    OUT held_hash bytea,
    OUT held_status integer,
    OUT held_headers jsonb,
    OUT held_body bytea
) LANGUAGE plpgsql AS $$
DECLARE
    c record;
    o record;
BEGIN
    claimed := false;
    placed := false;
    IF NOT pg_try_advisory_xact_lock(hashtext(p_user_id::text), hashtext(p_key)) THEN
        held_state := 'in_flight';
        RETURN;
    END IF;
    SELECT * INTO c FROM cygate_claim_key(
        p_user_id, p_key, p_method, p_path, p_hash, p_claim, p_key_ttl, p_in_flight);
    IF NOT c.won THEN
        held_state := c.held_state;
        held_hash := c.held_hash;
        held_status := c.held_status;
        held_headers := c.held_headers;
        held_body := c.held_body;
        RETURN;
    END IF;
    claimed := true;
    SELECT * INTO o FROM cygate_place_order(
        p_order_id, p_user_id, p_ids, p_qtys, p_address, p_ttl, p_key, p_claim, p_headers);
    placed := o.placed;
    body := o.body;
    found_ids := o.found_ids;
    stocks := o.stocks;
    currencies := o.currencies;
END
$$;
