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
--   the stock asked for. A refusal returns placed = false with what the locks read (found_ids,
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
) LANGUAGE plpgsql AS $$
-- PERF: one statement per product and per line, with scalar parameters, rather than statements
-- over unnest(arrays): PostgreSQL plans a statement again on every call while its custom plan
-- looks cheaper than the generic one, and one that knows an array's length always does (that
-- planning was a fifth of PostgreSQL's CPU per order). Scalar statements get the generic plan
-- after five calls, once per connection: the same primary-key lookups.
DECLARE
    n integer := cardinality(p_ids);
    r record;
    v_prices bigint[] := '{}';
    v_total bigint := 0;
    v_now timestamptz;
    v_expires timestamptz;
    v_lines text := '';
    v_items jsonb := '[]';
    refused boolean := false;
BEGIN
    placed := false;
    found_ids := '{}';
    stocks := '{}';
    currencies := '{}';
    -- NOTE: one lock at a time in ascending id order (p_ids is sorted): the lock order of every
    -- writer of stock, so concurrent orders queue and never deadlock.
    FOR i IN 1 .. n LOOP
        SELECT stock, price_cents, currency::text AS currency INTO r
          FROM products WHERE id = p_ids[i] FOR UPDATE;
        IF NOT FOUND THEN
            refused := true;
            CONTINUE;
        END IF;
        found_ids := found_ids || p_ids[i];
        stocks := stocks || r.stock;
        currencies := currencies || r.currency;
        v_prices := v_prices || r.price_cents;
        refused := refused OR r.currency <> currencies[1] OR r.stock < p_qtys[i];
    END LOOP;
    IF refused THEN
        RETURN;  -- nothing written; the caller names the problem from what was read
    END IF;

    FOR i IN 1 .. n LOOP
        UPDATE products SET stock = stock - p_qtys[i] WHERE id = p_ids[i];
        v_total := v_total + v_prices[i] * p_qtys[i];
    END LOOP;
    INSERT INTO orders (id, user_id, status, total_cents, currency, shipping_address, expires_at)
    VALUES (p_order_id, p_user_id, 'pending', v_total, currencies[1], p_address::jsonb,
            now() + make_interval(secs => p_ttl))
    RETURNING created_at, expires_at INTO v_now, v_expires;
    FOR i IN 1 .. n LOOP
        INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
        VALUES (p_order_id, p_ids[i], p_qtys[i], v_prices[i]);
        v_items := v_items || jsonb_build_object('product_id', p_ids[i], 'quantity', p_qtys[i]);
        -- The body's lines: field for field what msgspec.json.encode(Order) gives.
        v_lines := v_lines || CASE WHEN i > 1 THEN ',' ELSE '' END
            || '{"product_id":"' || p_ids[i] || '","quantity":' || p_qtys[i]
            || ',"unit_price_cents":' || v_prices[i] || '}';
    END LOOP;
    INSERT INTO outbox (aggregate, aggregate_id, event_type, payload)
    VALUES ('order', p_order_id::text, 'order.created', jsonb_build_object(
        'order_id', p_order_id, 'user_id', p_user_id, 'total_cents', v_total,
        'currency', currencies[1], 'items', v_items));

    -- The body: what msgspec.json.encode(Order) gives (a test compares them byte for byte).
    body := convert_to(
        '{"id":"' || p_order_id || '","user_id":"' || p_user_id
        || '","status":"pending","items":[' || v_lines || '],"total_cents":' || v_total
        || ',"currency":"' || currencies[1] || '","shipping_address":' || p_address
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
