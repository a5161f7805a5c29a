-- Retrieval that understands shoppers: typo correction by trigram similarity, the store's own
-- synonyms, and curated answers searched like article chunks. pg_trgm ships with PostgreSQL
-- (contrib); both the machine's server and the embedded one load it.
--
-- Applies after 0004_sites.sql: knowledge_chunks already carries site_id (so curated-answer
-- chunks do too), and every table below is keyed by site first, so a search and a sync stay
-- within one site.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- A curated answer (answers.toml beside the knowledge folder) is indexed as an "article" of
-- one chunk, path 'answers.toml#<id>', whose example questions rank like its heading.
ALTER TABLE knowledge_chunks
    ADD COLUMN kind     text NOT NULL DEFAULT 'article' CHECK (kind IN ('article', 'answer')),
    ADD COLUMN examples text NOT NULL DEFAULT '',  -- a curated answer's example questions
    ADD COLUMN link     text;                      -- a curated answer's article, for more

ALTER TABLE knowledge_chunks DROP COLUMN search_vector;
ALTER TABLE knowledge_chunks ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, article_title), 'A')
    || setweight(to_tsvector('english'::regconfig, heading || ' ' || examples), 'B')
    || setweight(to_tsvector('english'::regconfig, body), 'C')
) STORED;
CREATE INDEX knowledge_chunks_search_vector_idx ON knowledge_chunks USING gin (search_vector)
    WITH (fastupdate = off);  -- searched far more than written: no pending list to scan
-- The title and heading alone: a word found in most chunks' bodies makes a chunk a search
-- candidate only where it names the chunk's topic, so a big store does not rank thousands.
ALTER TABLE knowledge_chunks ADD COLUMN heading_vector tsvector GENERATED ALWAYS AS (
    to_tsvector('english'::regconfig, article_title || ' ' || heading || ' ' || examples)
) STORED;
CREATE INDEX knowledge_chunks_heading_vector_idx ON knowledge_chunks USING gin (heading_vector)
    WITH (fastupdate = off);

-- Every word of the index, for typo correction: `word % 'shiping'` finds 'shipping'.
CREATE TABLE knowledge_words (
    site_id bigint NOT NULL DEFAULT 1 REFERENCES sites (id),
    word    text NOT NULL,
    PRIMARY KEY (site_id, word)
);
-- The trigram index finds the candidates across sites; the site filter is applied to those few.
CREATE INDEX knowledge_words_trigram_idx ON knowledge_words USING gin (word gin_trgm_ops);

-- The store's synonyms file (synonyms.toml beside the knowledge folder), mirrored so that every
-- instance sees an edit after `python -m app knowledge sync`, like the articles.
CREATE TABLE knowledge_synonyms (
    site_id bigint NOT NULL DEFAULT 1 REFERENCES sites (id),
    phrase  text NOT NULL,  -- the shopper's words, lower case
    terms   text NOT NULL,  -- the words the articles use for them
    PRIMARY KEY (site_id, phrase)
);
CREATE TABLE knowledge_regions (
    site_id       bigint NOT NULL DEFAULT 1 REFERENCES sites (id),
    region        text NOT NULL,    -- a shipping region of the site's profile, e.g. 'Europe'
    country_codes text[] NOT NULL,  -- ISO 3166 alpha-2 codes it covers
    PRIMARY KEY (site_id, region)
);
