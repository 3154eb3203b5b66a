-- Placeholder on the pres branch only: tern refuses gaps, and this branch's
-- migration is 005. Delete this file at merge; branch integ brings the real 004.
select 1;
