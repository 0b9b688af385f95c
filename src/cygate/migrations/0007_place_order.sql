-- Order placement in one statement (issue 7, throughput): the product locks, the checks, the
-- stock taken, the order, its lines, its order.created outbox row and, when the caller holds an
-- Idempotency-Key claim, the recorded 201 response: one round trip instead of three (the caller
-- keeps BEGIN and COMMIT of its own, so a gateway that dies mid-order never commits it).

-- A timestamp as msgspec encodes a UTC datetime in JSON: seconds, then ".ffffff" only when the
-- microseconds are not zero, then "Z" (the order bodies the gateway sends are these bytes).
-- PERF: STABLE like to_char, and not STRICT, so the planner inlines it into the statement that
-- calls it (a SQL function called as a function is planned again on every call).
CREATE FUNCTION cygate_json_time(t timestamptz) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT '"' || to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN date_trunc('second', t) = t THEN ''
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || 'Z"'
$$;

-- NOTE on the contract (cygate.services.orders.store.place is the only caller):
-- * p_ids are distinct and ascending, p_qtys[i] is the quantity of p_ids[i];
-- * p_address is the shipping address as JSON text, copied verbatim into the body;
-- * the products are locked in ascending id order (as every writer of stock does: no deadlock),
--   and nothing is written unless every product exists, all share one currency and each has
--   the stock asked for. A refusal returns placed = false with what the lock read (found_ids,
--   stocks, currencies, in id order) and writes nothing: the caller names the problem;
-- * p_key NULL: no idempotency record. Otherwise the 201 response (body, p_headers) is recorded
--   on the caller's claim (p_user_id, p_key, p_claim), in this transaction; a claim taken over
--   by another attempt raises SQLSTATE CYG01 and the caller's transaction rolls back.
CREATE FUNCTION cygate_place_order(
    p_order_id uuid,
    p_user_id uuid,
    p_ids uuid[],
    p_qtys integer[],
    p_address text,
    p_ttl double precision,
    p_key text,
    p_claim uuid,
    p_headers jsonb,
    OUT placed boolean,
    OUT body bytea,
    OUT found_ids uuid[],
    OUT stocks integer[],
    OUT currencies text[]
) LANGUAGE plpgsql
-- PERF: generic plans for the statements below, planned once per connection. By default
-- PostgreSQL keeps re-planning a statement whose custom plan looks cheaper than the generic
-- one, which ``id = ANY (p_ids)`` always does (it knows the array's length): that planning was
-- a fifth of PostgreSQL's CPU per order. The generic plans are the same index scans.
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_prices bigint[];
    v_total bigint;
    v_currency text;
    v_now timestamptz;
    v_expires timestamptz;
    v_lines text;
BEGIN
    SELECT array_agg(l.id ORDER BY l.id), array_agg(l.stock ORDER BY l.id),
           array_agg(l.price_cents ORDER BY l.id), array_agg(l.currency ORDER BY l.id)
      INTO found_ids, stocks, v_prices, currencies
      FROM (SELECT id, stock, price_cents, currency::text AS currency FROM products
             WHERE id = ANY (p_ids) ORDER BY id FOR UPDATE) AS l;
    placed := false;
    IF coalesce(cardinality(found_ids), 0) <> cardinality(p_ids)
       OR EXISTS (SELECT 1 FROM unnest(currencies) AS c WHERE c <> currencies[1])
       OR EXISTS (SELECT 1 FROM unnest(stocks, p_qtys) AS s(stock, q) WHERE s.stock < s.q) THEN
        RETURN;
    END IF;

    v_currency := currencies[1];
    SELECT sum(l.p * l.q) INTO v_total FROM unnest(v_prices, p_qtys) AS l(p, q);
    UPDATE products p SET stock = p.stock - l.q
      FROM unnest(p_ids, p_qtys) AS l(id, q) WHERE p.id = l.id;
    INSERT INTO orders (id, user_id, status, total_cents, currency, shipping_address, expires_at)
    VALUES (p_order_id, p_user_id, 'pending', v_total, v_currency, p_address::jsonb,
            now() + make_interval(secs => p_ttl))
    RETURNING created_at, expires_at INTO v_now, v_expires;
    INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
    SELECT p_order_id, l.id, l.q, l.p FROM unnest(p_ids, p_qtys, v_prices) AS l(id, q, p);
    INSERT INTO outbox (aggregate, aggregate_id, event_type, payload)
    VALUES ('order', p_order_id::text, 'order.created', jsonb_build_object(
        'order_id', p_order_id, 'user_id', p_user_id, 'total_cents', v_total,
        'currency', v_currency,
        'items', (SELECT jsonb_agg(jsonb_build_object('product_id', l.id, 'quantity', l.q)
                                   ORDER BY l.n)
                    FROM unnest(p_ids, p_qtys) WITH ORDINALITY AS l(id, q, n))));

    -- The body: field for field what msgspec.json.encode(Order) gives (a test compares them).
    SELECT string_agg(format('{"product_id":"%s","quantity":%s,"unit_price_cents":%s}',
                             l.id, l.q, l.p), ',' ORDER BY l.n)
      INTO v_lines FROM unnest(p_ids, p_qtys, v_prices) WITH ORDINALITY AS l(id, q, p, n);
    body := convert_to(
        '{"id":"' || p_order_id || '","user_id":"' || p_user_id
        || '","status":"pending","items":[' || v_lines || '],"total_cents":' || v_total
        || ',"currency":"' || v_currency || '","shipping_address":' || p_address
        || ',"created_at":' || cygate_json_time(v_now)
        || ',"updated_at":' || cygate_json_time(v_now)
        || ',"expires_at":' || cygate_json_time(v_expires) || '}',
        'UTF8');

    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys
           SET state = 'done', response_status = 201, response_headers = p_headers,
               response_body = body
         WHERE user_id = p_user_id AND key = p_key AND claim = p_claim AND state = 'in_flight';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the claim of Idempotency-Key % was taken over', p_key
                USING ERRCODE = 'CYG01';
        END IF;
    END IF;
    placed := true;
END
$$;
