-- A site key that starts with "-" reads as an option on the command line
-- (`python -m app sites secret -AbC…` says "the following arguments are required: key"), and one
-- key in 64 did: base64's "+" became "-". New keys map "+" to "x" instead, so none starts with
-- a dash (the CHECK of sql/0004_sites.sql still allows "-" and "_" inside existing keys).
ALTER TABLE sites ALTER COLUMN site_key SET DEFAULT
    translate(rtrim(encode(uuid_send(gen_random_uuid()), 'base64'), '='), '+/', 'x_');
