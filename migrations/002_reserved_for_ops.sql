-- Placeholder on the pres branch only: tern refuses gaps, and this branch's
-- migration is 005. Delete this file at merge; branch ops brings the real 002.
select 1;
