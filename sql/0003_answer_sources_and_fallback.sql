-- Which help-centre articles an answer drew on, and whether it was answered from the knowledge
-- base because the model failed before its first token. Kept on the row so that replaying a
-- finished answer gives the same `done` event as the live stream did.
ALTER TABLE messages
    ADD COLUMN fallback boolean NOT NULL DEFAULT false,
    ADD COLUMN sources  jsonb   NOT NULL DEFAULT '[]'::jsonb;
