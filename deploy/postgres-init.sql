-- Run once by the postgres image when its volume is new (docker-compose.yml).
-- Login roles for the ledger's runtime services; `ledger roles` (run by the setup
-- service) creates the group roles and their grants, which these logins join.
CREATE ROLE ledger_writer NOLOGIN;
CREATE ROLE ledger_follower NOLOGIN;
CREATE ROLE ledger_reader NOLOGIN;
CREATE ROLE ledger_app_writer LOGIN PASSWORD 'writer' IN ROLE ledger_writer;
CREATE ROLE ledger_app_follower LOGIN PASSWORD 'follower' IN ROLE ledger_follower;
CREATE ROLE ledger_app_reader LOGIN PASSWORD 'reader' IN ROLE ledger_reader;
