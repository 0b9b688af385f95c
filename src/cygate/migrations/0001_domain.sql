-- The whole domain of the seed: identity, catalog, orders, payments, and the plumbing that keeps
-- them honest (idempotency keys, outbox, audit log). Money is integer minor units.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Identity -----------------------------------------------------------------------------------

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text,                       -- NULL once erased (GDPR)
    password_hash  text,                       -- Argon2id PHC string; NULL once erased
    name           text NOT NULL DEFAULT '',
    roles          text[] NOT NULL DEFAULT ARRAY['customer']::text[]
                   CHECK (roles <@ ARRAY['customer', 'catalog_manager', 'admin']::text[]),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    erased_at      timestamptz
);
-- Emails are unique whatever their case (the app also stores them lower-cased).
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- The seed's Profile: one per user, kept apart so erasure can drop it whole.
CREATE TABLE profiles (
    user_id        uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    phone          text,
    default_address jsonb,
    marketing_opt_in boolean NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE service_clients (
    client_id      text PRIMARY KEY,
    secret_hash    text NOT NULL,
    roles          text[] NOT NULL DEFAULT ARRAY[]::text[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);

-- Refresh tokens are stored only as hashes; every rotation links to its parent, and a family
-- is every token descended from one login.
CREATE TABLE refresh_tokens (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family_id          uuid NOT NULL,
    parent_id          uuid REFERENCES refresh_tokens(id) ON DELETE SET NULL,
    token_hash         bytea NOT NULL UNIQUE,
    issued_at          timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    family_expires_at  timestamptz NOT NULL,   -- absolute lifetime; rotation never extends it
    used_at            timestamptz,
    revoked_at         timestamptz,
    CHECK (expires_at <= family_expires_at)
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- Catalog ------------------------------------------------------------------------------------

CREATE TABLE categories (
    id          uuid PRIMARY KEY,
    parent_id   uuid REFERENCES categories(id) ON DELETE RESTRICT,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS DISTINCT FROM id)
);
CREATE INDEX categories_parent_idx ON categories (parent_id);

CREATE TABLE products (
    id           uuid PRIMARY KEY,
    sku          text NOT NULL UNIQUE CHECK (length(sku) BETWEEN 1 AND 64),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 300),
    description  text NOT NULL DEFAULT '',
    price_cents  bigint NOT NULL CHECK (price_cents >= 0),
    currency     char(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
    category_id  uuid NOT NULL REFERENCES categories(id) ON DELETE RESTRICT,
    stock        integer NOT NULL CHECK (stock >= 0),
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    search       tsvector GENERATED ALWAYS AS (
                     setweight(to_tsvector('english', name), 'A') ||
                     setweight(to_tsvector('english', description), 'B')
                 ) STORED
);
-- Keyset pagination: every sort order has an index ending in id, the tie-breaker.
CREATE INDEX products_category_id_idx ON products (category_id, id);
CREATE INDEX products_price_id_idx ON products (price_cents, id);
CREATE INDEX products_category_price_id_idx ON products (category_id, price_cents, id);
CREATE INDEX products_created_id_idx ON products (created_at, id);
CREATE INDEX products_name_id_idx ON products (name, id);
CREATE INDEX products_search_idx ON products USING gin (search);
CREATE INDEX products_name_trgm_idx ON products USING gin (name gin_trgm_ops);

-- Orders and payments ------------------------------------------------------------------------

CREATE TABLE orders (
    id                uuid PRIMARY KEY,
    user_id           uuid REFERENCES users(id) ON DELETE SET NULL,  -- kept after erasure
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'paid', 'cancelled', 'shipped', 'expired')),
    total_cents       bigint NOT NULL CHECK (total_cents >= 0),
    currency          char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    shipping_address  jsonb,                                          -- NULL once erased
    version           integer NOT NULL DEFAULT 1,
    expires_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id);
CREATE INDEX orders_pending_expiry_idx ON orders (expires_at) WHERE status = 'pending';

CREATE TABLE order_items (
    order_id          uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    product_id        uuid NOT NULL REFERENCES products(id) ON DELETE RESTRICT,
    quantity          integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    unit_price_cents  bigint NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_items_product_idx ON order_items (product_id);

CREATE TABLE payments (
    id                 uuid PRIMARY KEY,
    order_id           uuid NOT NULL REFERENCES orders(id) ON DELETE RESTRICT,
    attempt            integer NOT NULL CHECK (attempt >= 1),
    status             text NOT NULL
                       CHECK (status IN ('initiated', 'captured', 'declined', 'failed', 'refunded')),
    amount_cents       bigint NOT NULL CHECK (amount_cents >= 0),
    currency           char(3) NOT NULL,
    processor_key      text NOT NULL UNIQUE,  -- idempotency key sent to the processor
    processor_ref      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, attempt)
);
-- At most one successful charge per order, whatever races happen.
CREATE UNIQUE INDEX payments_one_capture_per_order ON payments (order_id) WHERE status = 'captured';

-- Webhook deliveries applied once, in any order.
CREATE TABLE payment_events (
    event_id      text PRIMARY KEY,
    payment_id    uuid REFERENCES payments(id) ON DELETE SET NULL,
    kind          text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    payload       jsonb NOT NULL
);

-- Plumbing -----------------------------------------------------------------------------------

CREATE TABLE idempotency_keys (
    user_id           uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key               text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    method            text NOT NULL,
    path              text NOT NULL,
    request_hash      bytea NOT NULL,
    state             text NOT NULL DEFAULT 'in_flight' CHECK (state IN ('in_flight', 'done')),
    response_status   integer,
    response_headers  jsonb,
    response_body     bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);

CREATE TABLE outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate      text NOT NULL,
    aggregate_id   text NOT NULL,
    event_type     text NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    uuid,
    action      text NOT NULL,
    target      text,
    client_ip   inet,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, at);
CREATE INDEX audit_log_action_idx ON audit_log (action, at);
