-- Analytics by language (issue 21): questions per language, and how many were answered in the
-- shopper's language or from the English articles instead.

-- An assistant's answer now keeps the language it is written in (app/answer_run.py): a model's
-- is the shopper's (the prompt asks for it), a composed one is the language of the articles it
-- came from. A shopper's message keeps its question's language, as before; NULL: not known
-- (an agent's message, or written before this).
COMMENT ON COLUMN messages.language IS
    'ISO 639-1: a shopper''s question as detected, an assistant''s answer as written; NULL: unknown';

-- The day's questions per question language (''unknown'' for NULL), rolled up like the rest.
CREATE TABLE analytics_language_days (
    site_id      bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    day          date NOT NULL,
    language     text NOT NULL,
    questions    integer NOT NULL,
    answered     integer NOT NULL,  -- by the assistant, complete
    in_language  integer NOT NULL,  -- ...in the question's language
    in_english   integer NOT NULL,  -- ...in English to a question in another language
    PRIMARY KEY (site_id, day, language)
);

-- The rollups are a cache of the messages: dropped here so every day is rolled up again with
-- its language rows (the next page view, or the background roll-up, rebuilds them).
TRUNCATE analytics_days, analytics_model_days, analytics_question_days;
