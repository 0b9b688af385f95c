-- Search (issue 7): the vocabulary that typo correction looks words up in.
--
-- NOTE: why a word table and not trigram similarity over products.name: on the 100k seed a
-- misspelt word shares its trigrams with thousands of names, so `name % q` rechecks most of
-- the table (tens of ms). The distinct words of the catalog are a few hundred to a few
-- thousand rows; correcting each unknown query word against them costs well under a
-- millisecond, and the corrected query then runs through the normal full-text index.
-- The words come from names and descriptions, lower-cased, split on anything not a letter or
-- digit. Words are only ever added (a statement-level trigger, so COPY of 100k rows costs one
-- INSERT ... SELECT): a word whose last product is gone stays, and correcting to it simply
-- finds nothing, which the search then treats as "no full-text hits".

CREATE TABLE search_words (
    word  text PRIMARY KEY CHECK (length(word) BETWEEN 1 AND 64)
);
CREATE INDEX search_words_trgm_idx ON search_words USING gin (word gin_trgm_ops);

CREATE FUNCTION search_words_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_words (word)
    SELECT DISTINCT w
    FROM new_rows,
         regexp_split_to_table(lower(new_rows.name || ' ' || new_rows.description), '[^[:alnum:]]+') AS w
    WHERE length(w) BETWEEN 2 AND 64
    ORDER BY w  -- one order for every writer: concurrent inserts of new words cannot deadlock
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

-- A renamed or re-described product (row level: a statement trigger with a transition table
-- cannot be limited to columns, and stock updates by orders must not pay for this).
CREATE FUNCTION search_words_add_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_words (word)
    SELECT DISTINCT w
    FROM regexp_split_to_table(lower(NEW.name || ' ' || NEW.description), '[^[:alnum:]]+') AS w
    WHERE length(w) BETWEEN 2 AND 64
    ORDER BY w
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER products_search_words_ins AFTER INSERT ON products
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION search_words_add();
CREATE TRIGGER products_search_words_upd AFTER UPDATE OF name, description ON products
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.description IS DISTINCT FROM NEW.description)
    EXECUTE FUNCTION search_words_add_row();

INSERT INTO search_words (word)
SELECT DISTINCT w
FROM products, regexp_split_to_table(lower(name || ' ' || description), '[^[:alnum:]]+') AS w
WHERE length(w) BETWEEN 2 AND 64
ON CONFLICT DO NOTHING;

-- Single-word searches: the rank of every (lexeme, product) pair, computed once per write.
--
-- PERF: "headphones" matches 5,000 of the 100k seeded products and "recycled" 38,000; ranking
-- every match at query time (ts_rank_cd over each matching row, then a sort) took 23-70 ms in
-- PostgreSQL alone. The rank of a one-lexeme query depends on the product alone, so it is kept
-- here, and the index (lexeme, rank DESC, product_id DESC) gives the best page, and every
-- keyset page after it, by reading `limit` index entries. Queries of several words intersect
-- far fewer rows and are ranked at query time as before. Kept by triggers: a product's rows
-- are written with it, rewritten when its name or description changes, and cascade away with
-- it (a TRUNCATE of products cascades here too).
CREATE TABLE search_lexemes (
    lexeme      text NOT NULL,
    rank        real NOT NULL,
    product_id  uuid NOT NULL REFERENCES products(id) ON DELETE CASCADE
);
CREATE INDEX search_lexemes_rank_idx ON search_lexemes (lexeme, rank DESC, product_id DESC);
CREATE INDEX search_lexemes_product_idx ON search_lexemes (product_id);

CREATE FUNCTION search_lexemes_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_lexemes (lexeme, rank, product_id)
    SELECT u.lexeme, ts_rank_cd(n.search, quote_literal(u.lexeme)::tsquery), n.id
    FROM new_rows n, unnest(n.search) AS u;
    RETURN NULL;
END;
$$;

CREATE FUNCTION search_lexemes_replace_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM search_lexemes WHERE product_id = NEW.id;
    INSERT INTO search_lexemes (lexeme, rank, product_id)
    SELECT u.lexeme, ts_rank_cd(NEW.search, quote_literal(u.lexeme)::tsquery), NEW.id
    FROM unnest(NEW.search) AS u;
    RETURN NULL;
END;
$$;

CREATE TRIGGER products_search_lexemes_ins AFTER INSERT ON products
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION search_lexemes_add();
CREATE TRIGGER products_search_lexemes_upd AFTER UPDATE OF name, description ON products
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.description IS DISTINCT FROM NEW.description)
    EXECUTE FUNCTION search_lexemes_replace_row();

INSERT INTO search_lexemes (lexeme, rank, product_id)
SELECT u.lexeme, ts_rank_cd(p.search, quote_literal(u.lexeme)::tsquery), p.id
FROM products p, unnest(p.search) AS u;
