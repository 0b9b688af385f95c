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
