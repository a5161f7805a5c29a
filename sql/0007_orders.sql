-- Order lookups with a signed shopper identity (issue 19).
--
-- Each site has an identity secret: the store signs its logged-in customer's identity with it
-- (an HS256 JWT, app/identity.py) and the widget passes the token on. Rotating it keeps the
-- previous secret valid until identity_previous_until, so pages already served keep working.
-- 64 hex characters from two random UUIDs: 244 random bits, no extension needed.
ALTER TABLE sites
    ADD COLUMN identity_secret text NOT NULL
        DEFAULT encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'hex'),
    ADD COLUMN identity_secret_previous text,
    ADD COLUMN identity_previous_until timestamptz,
    -- The store's order API (README "The store connector"); NULL: the deployment's setting.
    ADD COLUMN orders_api_url text,
    ADD COLUMN orders_api_token text,
    ADD COLUMN order_number_pattern text;

-- The verified shopper a conversation was last had with (NULL: anonymous), for the inbox.
-- It is never authority for a lookup: each request's own token is.
ALTER TABLE conversations
    ADD COLUMN customer_id text,
    ADD COLUMN customer_email text;

-- The tool events an answer sent (order cards, app/answer_events.py `tool`), so a replay of
-- the settled answer shows them again.
ALTER TABLE messages ADD COLUMN tools jsonb NOT NULL DEFAULT '[]';
