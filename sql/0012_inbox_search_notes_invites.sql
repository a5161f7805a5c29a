-- The back office, continued: full-text search over messages, staff notes, and invitations.

-- Search: the 'simple' configuration (no stemming, no stop words) because a conversation may be
-- in any language; an expression index, so no column is added and no table is rewritten. The
-- query in app/messages.py uses the same expression, or the index is not used.
CREATE INDEX messages_text_search ON messages USING gin (to_tsvector('simple', text));

-- Keyset paging of the inbox walks (last_activity_at DESC, id) within the staff's sites.
CREATE INDEX conversations_site_activity_id ON conversations (site_id, last_activity_at DESC, id DESC);

-- A note by staff on a conversation: for colleagues only, never in the shopper's history,
-- never in the conversation's stream (which the shopper reads), never in the prompt.
CREATE TABLE conversation_notes (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    site_id          bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    staff_id         bigint REFERENCES staff (id) ON DELETE SET NULL,
    text             text NOT NULL CHECK (text <> ''),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_notes_conversation ON conversation_notes (conversation_id, created_at);

-- An owner's invitation of an agent: a one-time link with a random token, of which only the
-- SHA-256 is stored (like sessions). Used once; expires after a few days.
CREATE TABLE staff_invites (
    token_hash  bytea PRIMARY KEY,
    email       text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    site_ids    bigint[] NOT NULL CHECK (cardinality(site_ids) > 0),
    invited_by  bigint REFERENCES staff (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

-- The answer offered the shopper a person (app/person_offer.py): kept so a reload shows it.
ALTER TABLE messages ADD COLUMN offer_person boolean NOT NULL DEFAULT false;
