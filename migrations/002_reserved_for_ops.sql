-- Placeholder for the ops branch's migration 002 (tern needs contiguous
-- numbers). Delete this file when ops' 002 is merged.
select 1;
