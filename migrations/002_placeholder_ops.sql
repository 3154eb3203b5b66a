-- Placeholder on the integ branch only: tern wants migrations numbered
-- without gaps, and 002 is the ops branch's number. Delete this file when
-- merging a branch that has its own 002.
select 1;
