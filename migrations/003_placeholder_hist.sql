-- Placeholder on the integ branch only: tern wants migrations numbered
-- without gaps, and 003 is the hist branch's number. Delete this file when
-- merging a branch that has its own 003.
select 1;
