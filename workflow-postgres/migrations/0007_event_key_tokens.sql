-- Which call recorded each event key: a send retried after a commit whose
-- outcome was lost finds its own key and answers "sent", not "duplicate".
ALTER TABLE event_keys ADD COLUMN token TEXT COLLATE "C";
