-- Placeholder on the pres branch only: tern refuses gaps, and this branch's
-- migration is 005. Delete this file at merge; branch hist brings the real 003.
select 1;
