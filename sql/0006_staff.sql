-- The back office: staff accounts, their sites and sessions, and who answers a conversation.
-- (0005 is taken by another branch; the runner applies files in name order, so this one runs
-- after it on a database that has both.)

CREATE TABLE staff (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stored as typed, compared lower-cased: one account per address whatever its case.
    email          text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    display_name   text NOT NULL CHECK (display_name <> ''),
    -- Argon2id in its PHC string form ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('owner', 'agent')),
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX staff_email_key ON staff (lower(email));

CREATE TABLE staff_sites (
    staff_id  bigint NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    site_id   bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    PRIMARY KEY (staff_id, site_id)
);
CREATE INDEX staff_sites_site ON staff_sites (site_id);

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is stored, so the
-- table read by someone else signs nobody in. Idle and absolute expiry are checked on use.
CREATE TABLE staff_sessions (
    token_hash    bytea PRIMARY KEY,
    staff_id      bigint NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    -- Sent back by the page on every state-changing request (X-CSRF-Token).
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);

-- Who answers: the assistant ('bot'), nobody yet ('waiting' for a person), one agent
-- ('human', agent_id), or nobody because it is done ('resolved').
ALTER TABLE conversations
    ADD COLUMN status text NOT NULL DEFAULT 'bot'
        CHECK (status IN ('bot', 'waiting', 'human', 'resolved')),
    ADD COLUMN agent_id bigint REFERENCES staff (id) ON DELETE SET NULL,
    ADD COLUMN waiting_since timestamptz,
    ADD COLUMN last_activity_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT conversations_human_has_agent CHECK ((status = 'human') = (agent_id IS NOT NULL));
CREATE INDEX conversations_site_activity ON conversations (site_id, last_activity_at DESC);

-- An agent's message: sender 'agent', with the agent who wrote it.
ALTER TABLE messages
    DROP CONSTRAINT IF EXISTS messages_sender_check,
    ADD CONSTRAINT messages_sender_check CHECK (sender IN ('user', 'ai', 'agent')),
    ADD COLUMN staff_id bigint REFERENCES staff (id) ON DELETE SET NULL;
