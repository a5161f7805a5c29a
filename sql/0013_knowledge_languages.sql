-- Per-language knowledge: a site's knowledge folder may hold a folder per language
-- (KNOWLEDGE_DIR/de/, .../es/) and curated answers per language (answers.de.toml beside
-- answers.toml). Each chunk and each typo-correction word keeps its language (ISO 639-1), a
-- search reads one language's rows, and each chunk is indexed with the text search
-- configuration of its language, so German words are stemmed as German.
ALTER TABLE knowledge_chunks
    ADD COLUMN language text NOT NULL DEFAULT 'en' CHECK (language ~ '^[a-z]{2,3}$');

ALTER TABLE knowledge_words ADD COLUMN language text NOT NULL DEFAULT 'en';
ALTER TABLE knowledge_words DROP CONSTRAINT knowledge_words_pkey,
    ADD PRIMARY KEY (site_id, language, word);

-- The one place that names a language's configuration: the index below and every search query
-- (websearch_to_tsquery(knowledge_search_config(language), ...)) call it. `simple` (no stemming,
-- no stop words) where PostgreSQL ships none, such as Hindi. A regconfig constant is resolved
-- when the function is created, so it is truly immutable, as a generated column requires.
CREATE FUNCTION knowledge_search_config(language text) RETURNS regconfig
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE language
        WHEN 'en' THEN 'english'::regconfig
        WHEN 'de' THEN 'german'::regconfig
        WHEN 'fr' THEN 'french'::regconfig
        WHEN 'es' THEN 'spanish'::regconfig
        ELSE 'simple'::regconfig
    END;

ALTER TABLE knowledge_chunks DROP COLUMN search_vector, DROP COLUMN heading_vector;
ALTER TABLE knowledge_chunks ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector(knowledge_search_config(language), article_title), 'A')
    || setweight(to_tsvector(knowledge_search_config(language), heading || ' ' || examples), 'B')
    || setweight(to_tsvector(knowledge_search_config(language), body), 'C')
) STORED;
ALTER TABLE knowledge_chunks ADD COLUMN heading_vector tsvector GENERATED ALWAYS AS (
    to_tsvector(knowledge_search_config(language), article_title || ' ' || heading || ' '
                || examples)
) STORED;
CREATE INDEX knowledge_chunks_search_vector_idx ON knowledge_chunks USING gin (search_vector)
    WITH (fastupdate = off);
CREATE INDEX knowledge_chunks_heading_vector_idx ON knowledge_chunks USING gin (heading_vector)
    WITH (fastupdate = off);
CREATE INDEX knowledge_chunks_site_language ON knowledge_chunks (site_id, language);
