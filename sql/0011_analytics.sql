-- Analytics and spend alerts (issue 18): what the back office's analytics page reads, and the
-- record that makes each spend alert go out once across every instance.

-- Milliseconds from the shopper's question to the answer's first token (NULL: no token came).
ALTER TABLE messages ADD COLUMN first_token_ms integer CHECK (first_token_ms >= 0);

-- When a person was first asked for, and when one first joined (took the conversation over).
-- waiting_since is cleared by a takeover, so it cannot say how long the shopper waited.
ALTER TABLE conversations
    ADD COLUMN handoff_at timestamptz,
    ADD COLUMN agent_joined_at timestamptz;

-- Set by the database on the status change itself, so every path that moves a conversation
-- (the shopper's handoff, a takeover, code on other branches) records it without knowing.
CREATE FUNCTION conversations_note_people() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'waiting' AND OLD.status <> 'waiting' AND NEW.handoff_at IS NULL THEN
        NEW.handoff_at := now();
    END IF;
    IF NEW.status = 'human' AND OLD.status <> 'human' AND NEW.agent_joined_at IS NULL THEN
        NEW.agent_joined_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER conversations_note_people BEFORE UPDATE OF status ON conversations
    FOR EACH ROW EXECUTE FUNCTION conversations_note_people();

-- The analytics page reads a site's period: these cover what its per-day queries read, so
-- they are index-only scans of the period alone, however long the history.
CREATE INDEX messages_site_created ON messages (site_id, created_at)
    INCLUDE (sender, status, fallback, model, prompt_tokens, completion_tokens, first_token_ms);
CREATE INDEX conversations_site_created ON conversations (site_id, created_at)
    INCLUDE (handoff_at, agent_joined_at);

-- One row per spend alert sent: the primary key is the dedupe. An instance sends an alert only
-- if its INSERT made the row, so several instances checking at once send it once.
CREATE TABLE spend_alerts (
    site_id    bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    day        date NOT NULL,   -- UTC, the token budget's day
    threshold  text NOT NULL,   -- a percentage of the budget ('50', '80', '100') or 'jump'
    tokens     bigint NOT NULL, -- the day's tokens when it was sent
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, day, threshold)
);

-- Only a person's wait needs the conversations' rows themselves: these are a few of them.
CREATE INDEX conversations_site_handoffs ON conversations (site_id, created_at)
    INCLUDE (handoff_at, agent_joined_at) WHERE handoff_at IS NOT NULL;

-- Rollups of settled days (app/analytics.py SETTLE_DAYS old): written once, the first time a
-- page needs the day, so a year's page reads 365 small rows instead of a year of messages.
-- Recent days are always counted live.
CREATE TABLE analytics_days (
    site_id         bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    day             date NOT NULL,
    conversations   integer NOT NULL,
    handoffs        integer NOT NULL,
    questions       integer NOT NULL,
    by_model        integer NOT NULL,
    by_knowledge    integer NOT NULL,
    errors          integer NOT NULL,
    cancelled       integer NOT NULL,
    interrupted     integer NOT NULL,
    thumbs_up       integer NOT NULL,
    thumbs_down     integer NOT NULL,
    csat_yes        integer NOT NULL,
    csat_answers    integer NOT NULL,
    -- Time to first token as a histogram: bucket (ms, a multiple of 10) -> answers, so a
    -- period's median is read from the days' histograms without the messages.
    first_token_ms  jsonb NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, day)
);

CREATE TABLE analytics_model_days (
    site_id            bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    day                date NOT NULL,
    model              text NOT NULL,
    answers            integer NOT NULL,
    prompt_tokens      bigint NOT NULL,
    completion_tokens  bigint NOT NULL,
    PRIMARY KEY (site_id, day, model)
);

-- The day's most asked question groups (the top ones only: the long tail of one-off wordings
-- is not what the page shows).
CREATE TABLE analytics_question_days (
    site_id      bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    day          date NOT NULL,
    key          text NOT NULL,
    title        text,
    example      text NOT NULL,
    questions    integer NOT NULL,
    thumbs_down  integer NOT NULL,
    votes        integer NOT NULL,
    PRIMARY KEY (site_id, day, key)
);
