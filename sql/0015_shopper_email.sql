-- Out of hours: the shopper's email, the agent's later reply sent to it, and the alert when
-- nobody takes a waiting conversation (app/shopper_email.py, app/waiting_alerts.py).

ALTER TABLE conversations
    -- Left by the shopper in the widget; for the reply email and for staff to read.
    ADD COLUMN shopper_email text CHECK (shopper_email ~ '^[^@\s]+@[^@\s]+$'),
    -- The store page the widget was on: the reply email's link goes back to it.
    ADD COLUMN shopper_page_url text,
    -- The last sign of a live widget stream (on opening, every 20 s, on closing): replies
    -- newer than this were not seen.
    ADD COLUMN shopper_seen_at timestamptz,
    -- While a stream is open: AWAY_S ahead, renewed by every beat; its close sets it to now(),
    -- and an instance that dies lets it lapse. Later than now(): the shopper is connected.
    ADD COLUMN shopper_online_until timestamptz,
    -- An agent replied to a shopper with an email: when the reply email is due (NULL: none).
    ADD COLUMN reply_email_due_at timestamptz,
    ADD COLUMN reply_emailed_at timestamptz,
    -- The back office's address as the handoff request reached it, for the alerts' links.
    ADD COLUMN inbox_url text,
    -- The waiting_since the "nobody took it" alert went out for: one alert per wait, whatever
    -- the number of instances (the UPDATE that sets it is the claim).
    ADD COLUMN unclaimed_alert_for timestamptz;

CREATE INDEX conversations_reply_email_due ON conversations (reply_email_due_at)
    WHERE reply_email_due_at IS NOT NULL;
CREATE INDEX conversations_waiting_since ON conversations (waiting_since)
    WHERE status = 'waiting';

-- A link that reopens a conversation in the widget (#chat-reopen=<token> on the store's page).
-- Only the token's SHA-256 is kept, so the table read by someone else opens nothing.
CREATE TABLE conversation_links (
    token_hash       bytea PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    site_id          bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL
);
CREATE INDEX conversation_links_conversation ON conversation_links (conversation_id);
