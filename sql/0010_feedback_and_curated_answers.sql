-- Learning from conversations: shoppers' votes on answers, whether a resolved conversation
-- solved their problem, and curated answers written in the back office.

-- A shopper's vote on one answer (the assistant's or an agent's), kept with the message: one
-- vote per answer, changed by voting again. The comment is optional and short (app/feedback.py).
ALTER TABLE messages
    ADD COLUMN feedback_rating  text CHECK (feedback_rating IN ('up', 'down')),
    ADD COLUMN feedback_comment text,
    ADD COLUMN feedback_at      timestamptz,
    -- Set on the shopper's latest question when they asked for a person: a knowledge gap.
    ADD COLUMN handoff_at       timestamptz;
-- The inbox's "thumbs down" filter and the gaps list read only the few rated rows.
CREATE INDEX messages_feedback_down ON messages (site_id, conversation_id)
    WHERE feedback_rating = 'down';

-- The knowledge-gaps list reads a site's newest questions first (app/knowledge_gaps.py).
CREATE INDEX messages_site_questions ON messages (site_id, created_at DESC)
    WHERE sender = 'user';

-- "Did we solve your problem?", asked once a conversation is resolved: yes or no.
ALTER TABLE conversations
    ADD COLUMN csat     text CHECK (csat IN ('yes', 'no')),
    ADD COLUMN csat_at  timestamptz;

-- Curated answers written in the back office. Each one is also indexed as a knowledge "article"
-- of one chunk (kind 'answer', path 'back-office#<id>'), so the search finds it exactly like an
-- entry of answers.toml; a file sync never touches those paths (app/knowledge.py).
CREATE TABLE curated_answers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id     bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    title       text NOT NULL CHECK (title <> ''),
    questions   text[] NOT NULL CHECK (cardinality(questions) > 0),
    answer      text NOT NULL CHECK (answer <> ''),
    -- The knowledge gap it closes (app/knowledge_gaps.py's group key), if written from one.
    gap_key     text,
    created_by  bigint REFERENCES staff (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX curated_answers_site ON curated_answers (site_id, updated_at DESC);

-- Bumped by every change to a site's indexed knowledge made while the app runs (a back-office
-- answer published, edited or withdrawn). Every search reads its site's row (one primary-key
-- lookup), so every instance sees the change on its next question, without a restart.
CREATE TABLE knowledge_revisions (
    site_id   bigint PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    revision  bigint NOT NULL DEFAULT 0
);
