-- Migration 0002: the indexes of the user directory's search (`GET /users/?q=`).
--
-- This file exists so that searching users by the start of their username or display name, in
-- any case, reads an index instead of every user. `sql.rs` (SEARCH_USERS) asks for
-- `lower(column) ~>=~ prefix AND lower(column) ~<~ next(prefix)` on each column: a range of
-- one of these indexes each, OR-ed by a bitmap, for custom and generic plans alike (a LIKE
-- whose pattern is a parameter is indexable only when the planner sees its value).
-- `text_pattern_ops` orders by bytes, whatever the database's collation, which is what a prefix
-- range needs. Never edit it after it has shipped.
CREATE INDEX users_username_search_idx ON users (lower(username) text_pattern_ops);
CREATE INDEX users_display_name_search_idx ON users (lower(display_name) text_pattern_ops);
