-- A job whose latest word from Pictory is a webhook body refers to that delivery instead of
-- keeping a second copy of the body in its own row, which doubled the body bytes written per
-- webhook. `raw_response` keeps Get Job answers (and the bodies stored before this migration).
ALTER TABLE jobs ADD COLUMN raw_delivery INTEGER REFERENCES deliveries (id);
