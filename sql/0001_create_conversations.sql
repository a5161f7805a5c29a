-- A conversation is one shopper's chat; its id is the widget's sessionId.
CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Both sides of a conversation. An answer row exists from its first moment with status
-- 'streaming' and is rewritten once when it ends, never per token.
CREATE TABLE messages (
    id                 uuid PRIMARY KEY,
    -- seq orders messages within a conversation: a user message and its answer share one
    -- transaction, so created_at alone can tie.
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    conversation_id    uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender             text NOT NULL CHECK (sender IN ('user', 'ai')),
    text               text NOT NULL DEFAULT '',
    status             text NOT NULL
                       CHECK (status IN ('streaming', 'complete', 'error', 'cancelled', 'interrupted')),
    model              text,
    prompt_tokens      integer,
    completion_tokens  integer,
    created_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);

-- History reads: a page of one conversation, newest first, before a given message.
CREATE INDEX messages_conversation_seq ON messages (conversation_id, seq DESC);
-- Start-up sweep for answers left 'streaming' by an instance that died.
CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming';
