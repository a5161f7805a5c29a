-- The language a shopper writes in (ISO 639-1, as app/language.py detects it): each shopper
-- message keeps the language of its question, and the conversation the language of its latest
-- question, so the back office can show and filter by it and analytics can count by it.
-- NULL: written before detection existed, or not a shopper's message.
ALTER TABLE conversations ADD COLUMN language text CHECK (language ~ '^[a-z]{2,3}$');
ALTER TABLE messages ADD COLUMN language text CHECK (language ~ '^[a-z]{2,3}$');
CREATE INDEX conversations_site_language ON conversations (site_id, language);
