-- A character's public share page (/s/<share_slug>): off by default. The slug is made the
-- first time its owner switches sharing on and kept when they switch it off, so a printed
-- QR code works again when sharing is back on; shared_at is set while it is on.
ALTER TABLE characters ADD COLUMN share_slug text;
ALTER TABLE characters ADD COLUMN shared_at timestamptz;
CREATE UNIQUE INDEX characters_share_slug_key ON characters (share_slug);
