-- The store's help-centre articles (KNOWLEDGE_DIR/*.md), split by headings into chunks and
-- indexed for full-text search. The files are the source of truth: these tables are an index
-- that `sync_knowledge` rebuilds file by file, so nothing here is ever edited by hand.

-- One row per article file. content_hash (sha256 of the file's bytes) lets a sync skip
-- unchanged files; the primary key on path means an article can only be indexed once.
CREATE TABLE knowledge_articles (
    path         text PRIMARY KEY,  -- relative to KNOWLEDGE_DIR, with '/' separators
    title        text NOT NULL,
    content_hash text NOT NULL,
    indexed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE knowledge_chunks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    article_path  text NOT NULL REFERENCES knowledge_articles (path) ON DELETE CASCADE,
    position      integer NOT NULL,  -- order of the chunk within its article, from 0
    article_title text NOT NULL,
    heading       text NOT NULL,
    body          text NOT NULL,
    content_hash  text NOT NULL,     -- sha256 of heading and body
    -- The title and heading say what a chunk is about far better than any word of its body,
    -- so they carry the heavier weights; search_knowledge ranks with these weights.
    search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, article_title), 'A')
        || setweight(to_tsvector('english'::regconfig, heading), 'B')
        || setweight(to_tsvector('english'::regconfig, body), 'C')
    ) STORED,
    -- A second sync of the same article can never add a second copy of a chunk.
    UNIQUE (article_path, position)
);

CREATE INDEX knowledge_chunks_search_vector_idx ON knowledge_chunks USING gin (search_vector);
