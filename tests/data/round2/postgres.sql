--
-- PostgreSQL database dump
--

\restrict ax5WYE51Q4cVrLzm6XM0YA2vKjxdNCsOueWzuekeMpsfLxhwQ3mpHRaHc9D4HyL

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: round2_fixture_schema; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA round2_fixture_schema;


--
-- Name: stored_event_text; Type: TYPE; Schema: round2_fixture_schema; Owner: -
--

CREATE TYPE round2_fixture_schema.stored_event_text AS (
	originator_id text,
	originator_version bigint,
	topic text,
	state bytea
);


--
-- Name: dispatcher_events_dispatcher_tracking_tracked(text, text, bigint, text[], bigint[], text[], bytea[]); Type: FUNCTION; Schema: round2_fixture_schema; Owner: -
--

CREATE FUNCTION round2_fixture_schema.dispatcher_events_dispatcher_tracking_tracked(p_lock_timeout text, p_application_name text, p_notification_id bigint, p_originator_ids text[], p_originator_versions bigint[], p_topics text[], p_states bytea[]) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$ BEGIN PERFORM set_config('lock_timeout', p_lock_timeout, true); INSERT INTO "round2_fixture_schema"."dispatcher_tracking" AS t (application_name, notification_id) VALUES (p_application_name, p_notification_id) ON CONFLICT (application_name) DO UPDATE SET notification_id = p_notification_id WHERE t.notification_id < p_notification_id; IF NOT FOUND THEN RAISE EXCEPTION 'Failed to record tracking for % %', p_application_name, p_notification_id USING ERRCODE = 'unique_violation'; END IF; IF cardinality(p_originator_ids) > 0 THEN LOCK TABLE "round2_fixture_schema"."dispatcher_events" IN EXCLUSIVE MODE; NOTIFY "dispatcher_events"; RETURN QUERY INSERT INTO "round2_fixture_schema"."dispatcher_events" (originator_id, originator_version, topic, state) SELECT * FROM unnest(p_originator_ids, p_originator_versions, p_topics, p_states) RETURNING notification_id;  END IF; END; $$;


--
-- Name: dispatcher_events_insert(text, text[], bigint[], text[], bytea[]); Type: FUNCTION; Schema: round2_fixture_schema; Owner: -
--

CREATE FUNCTION round2_fixture_schema.dispatcher_events_insert(p_lock_timeout text, p_originator_ids text[], p_originator_versions bigint[], p_topics text[], p_states bytea[]) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$ BEGIN PERFORM set_config('lock_timeout', p_lock_timeout, true); LOCK TABLE "round2_fixture_schema"."dispatcher_events" IN EXCLUSIVE MODE; NOTIFY "dispatcher_events"; RETURN QUERY INSERT INTO "round2_fixture_schema"."dispatcher_events" (originator_id, originator_version, topic, state) SELECT * FROM unnest(p_originator_ids, p_originator_versions, p_topics, p_states) RETURNING notification_id; END; $$;


--
-- Name: dispatcher_events_insert1(text, text, bigint, text, bytea); Type: FUNCTION; Schema: round2_fixture_schema; Owner: -
--

CREATE FUNCTION round2_fixture_schema.dispatcher_events_insert1(p_lock_timeout text, p_originator_id text, p_originator_version bigint, p_topic text, p_state bytea) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$ DECLARE v_notification_id bigint; BEGIN PERFORM set_config('lock_timeout', p_lock_timeout, true); LOCK TABLE "round2_fixture_schema"."dispatcher_events" IN EXCLUSIVE MODE; NOTIFY "dispatcher_events"; INSERT INTO "round2_fixture_schema"."dispatcher_events" (originator_id, originator_version, topic, state) VALUES (p_originator_id, p_originator_version, p_topic, p_state) RETURNING notification_id INTO v_notification_id; RETURN v_notification_id; END; $$;


--
-- Name: ledger_events_insert(text, text[], bigint[], text[], bytea[]); Type: FUNCTION; Schema: round2_fixture_schema; Owner: -
--

CREATE FUNCTION round2_fixture_schema.ledger_events_insert(p_lock_timeout text, p_originator_ids text[], p_originator_versions bigint[], p_topics text[], p_states bytea[]) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$ BEGIN PERFORM set_config('lock_timeout', p_lock_timeout, true); LOCK TABLE "round2_fixture_schema"."ledger_events" IN EXCLUSIVE MODE; NOTIFY "ledger_events"; RETURN QUERY INSERT INTO "round2_fixture_schema"."ledger_events" (originator_id, originator_version, topic, state) SELECT * FROM unnest(p_originator_ids, p_originator_versions, p_topics, p_states) RETURNING notification_id; END; $$;


--
-- Name: ledger_events_insert1(text, text, bigint, text, bytea); Type: FUNCTION; Schema: round2_fixture_schema; Owner: -
--

CREATE FUNCTION round2_fixture_schema.ledger_events_insert1(p_lock_timeout text, p_originator_id text, p_originator_version bigint, p_topic text, p_state bytea) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$ DECLARE v_notification_id bigint; BEGIN PERFORM set_config('lock_timeout', p_lock_timeout, true); LOCK TABLE "round2_fixture_schema"."ledger_events" IN EXCLUSIVE MODE; NOTIFY "ledger_events"; INSERT INTO "round2_fixture_schema"."ledger_events" (originator_id, originator_version, topic, state) VALUES (p_originator_id, p_originator_version, p_topic, p_state) RETURNING notification_id INTO v_notification_id; RETURN v_notification_id; END; $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: dispatcher_events; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.dispatcher_events (
    originator_id text NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigint NOT NULL
)
WITH (autovacuum_enabled='true', autovacuum_vacuum_threshold='100000000', autovacuum_vacuum_scale_factor='0.5', autovacuum_analyze_threshold='1000', autovacuum_analyze_scale_factor='0.01');


--
-- Name: dispatcher_events_notification_id_seq; Type: SEQUENCE; Schema: round2_fixture_schema; Owner: -
--

CREATE SEQUENCE round2_fixture_schema.dispatcher_events_notification_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: dispatcher_events_notification_id_seq; Type: SEQUENCE OWNED BY; Schema: round2_fixture_schema; Owner: -
--

ALTER SEQUENCE round2_fixture_schema.dispatcher_events_notification_id_seq OWNED BY round2_fixture_schema.dispatcher_events.notification_id;


--
-- Name: dispatcher_tracking; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.dispatcher_tracking (
    application_name text NOT NULL,
    notification_id bigint
)
WITH (autovacuum_enabled='true', autovacuum_vacuum_threshold='100000000', autovacuum_vacuum_scale_factor='0.5', autovacuum_analyze_threshold='1000', autovacuum_analyze_scale_factor='0.01');


--
-- Name: ledger_events; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.ledger_events (
    originator_id text NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigint NOT NULL
)
WITH (autovacuum_enabled='true', autovacuum_vacuum_threshold='100000000', autovacuum_vacuum_scale_factor='0.5', autovacuum_analyze_threshold='1000', autovacuum_analyze_scale_factor='0.01');


--
-- Name: ledger_events_notification_id_seq; Type: SEQUENCE; Schema: round2_fixture_schema; Owner: -
--

CREATE SEQUENCE round2_fixture_schema.ledger_events_notification_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: ledger_events_notification_id_seq; Type: SEQUENCE OWNED BY; Schema: round2_fixture_schema; Owner: -
--

ALTER SEQUENCE round2_fixture_schema.ledger_events_notification_id_seq OWNED BY round2_fixture_schema.ledger_events.notification_id;


--
-- Name: ledger_keys; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.ledger_keys (
    name text NOT NULL,
    value text NOT NULL
);


--
-- Name: ledger_secret_keys; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.ledger_secret_keys (
    execution_id text NOT NULL,
    data_key text NOT NULL
);


--
-- Name: view_audit; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_audit (
    execution_id text NOT NULL COLLATE pg_catalog."C",
    kind text,
    phase text,
    completed_at timestamp with time zone,
    has_callback boolean,
    outcome text,
    attempts bigint DEFAULT 0 NOT NULL,
    delivered_at timestamp with time zone
);


--
-- Name: view_audit_open; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_audit_open (
    execution_id text NOT NULL COLLATE pg_catalog."C",
    kind text NOT NULL,
    has_callback boolean NOT NULL
);


--
-- Name: view_audit_tracking; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_audit_tracking (
    application_name text NOT NULL,
    notification_id bigint
)
WITH (autovacuum_enabled='true', autovacuum_vacuum_threshold='100000000', autovacuum_vacuum_scale_factor='0.5', autovacuum_analyze_threshold='1000', autovacuum_analyze_scale_factor='0.01');


--
-- Name: view_status; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_status (
    id text NOT NULL COLLATE pg_catalog."C",
    kind text NOT NULL,
    phase text NOT NULL,
    agent_id text,
    workflow_id text,
    workflow_instance_id text,
    org text,
    labels text NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    completed_at timestamp with time zone,
    has_callback boolean NOT NULL,
    version bigint NOT NULL
);


--
-- Name: view_status_counts; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_status_counts (
    kind text NOT NULL,
    phase text NOT NULL,
    n bigint NOT NULL
);


--
-- Name: view_status_labels; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_status_labels (
    execution_id text NOT NULL COLLATE pg_catalog."C",
    key text NOT NULL,
    value text NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: view_status_tracking; Type: TABLE; Schema: round2_fixture_schema; Owner: -
--

CREATE TABLE round2_fixture_schema.view_status_tracking (
    application_name text NOT NULL,
    notification_id bigint
)
WITH (autovacuum_enabled='true', autovacuum_vacuum_threshold='100000000', autovacuum_vacuum_scale_factor='0.5', autovacuum_analyze_threshold='1000', autovacuum_analyze_scale_factor='0.01');


--
-- Name: dispatcher_events notification_id; Type: DEFAULT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.dispatcher_events ALTER COLUMN notification_id SET DEFAULT nextval('round2_fixture_schema.dispatcher_events_notification_id_seq'::regclass);


--
-- Name: ledger_events notification_id; Type: DEFAULT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.ledger_events ALTER COLUMN notification_id SET DEFAULT nextval('round2_fixture_schema.ledger_events_notification_id_seq'::regclass);


--
-- Data for Name: dispatcher_events; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.dispatcher_events (originator_id, originator_version, topic, state, notification_id) FROM stdin;
\.


--
-- Data for Name: dispatcher_tracking; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.dispatcher_tracking (application_name, notification_id) FROM stdin;
__migration__	1
Ledger	15
\.


--
-- Data for Name: ledger_events; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.ledger_events (originator_id, originator_version, topic, state, notification_id) FROM stdin;
aex-round2-0	1	ledger.domain.execution:Execution.Created	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3136323233362b30303a3030227d2c226f726967696e61746f725f746f706963223a226c65646765722e646f6d61696e2e657865637574696f6e3a457865637574696f6e222c226b696e64223a224167656e74457865637574696f6e222c226170695f76657273696f6e223a226167656e7469632e737469676d65722e61692f7631222c226d65746164617461223a7b225f747970655f223a2270623a6c65646765722e6170692e636f6d6d6f6e732e76312e4170695265736f757263654d65746164617461222c225f646174615f223a22476778685a586774636d3931626d51794c54417945516f485a6d6c34644856795a524947636d3931626d5179227d2c2273706563223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e53706563222c225f646174615f223a22456764685a3256756443307747676479623356755a4341794d6764306232746c62693077227d2c226163746f72223a22227d	1
aex-round2-0	2	ledger.domain.execution:Execution.StatusChanged	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3137303132322b30303a3030227d2c227068617365223a322c227061746368223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e537461747573222c225f646174615f223a224541493d227d2c226163746f72223a22227d	2
aex-round2-1	1	ledger.domain.execution:Execution.Created	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3138303934342b30303a3030227d2c226f726967696e61746f725f746f706963223a226c65646765722e646f6d61696e2e657865637574696f6e3a457865637574696f6e222c226b696e64223a224167656e74457865637574696f6e222c226170695f76657273696f6e223a226167656e7469632e737469676d65722e61692f7631222c226d65746164617461223a7b225f747970655f223a2270623a6c65646765722e6170692e636f6d6d6f6e732e76312e4170695265736f757263654d65746164617461222c225f646174615f223a22476778685a586774636d3931626d51794c54457945516f485a6d6c34644856795a524947636d3931626d5179227d2c2273706563223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e53706563222c225f646174615f223a22456764685a3256756443307847676479623356755a4341794d6764306232746c62693078227d2c226163746f72223a22227d	3
aex-round2-1	2	ledger.domain.execution:Execution.StatusChanged	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3138383937322b30303a3030227d2c227068617365223a322c227061746368223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e537461747573222c225f646174615f223a224541493d227d2c226163746f72223a22227d	4
aex-round2-2	1	ledger.domain.execution:Execution.Created	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3139323830352b30303a3030227d2c226f726967696e61746f725f746f706963223a226c65646765722e646f6d61696e2e657865637574696f6e3a457865637574696f6e222c226b696e64223a224167656e74457865637574696f6e222c226170695f76657273696f6e223a226167656e7469632e737469676d65722e61692f7631222c226d65746164617461223a7b225f747970655f223a2270623a6c65646765722e6170692e636f6d6d6f6e732e76312e4170695265736f757263654d65746164617461222c225f646174615f223a22476778685a586774636d3931626d51794c54497945516f485a6d6c34644856795a524947636d3931626d5179227d2c2273706563223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e53706563222c225f646174615f223a22456764685a3256756443307947676479623356755a4341794d6764306232746c62693079227d2c226163746f72223a22227d	5
aex-round2-2	2	ledger.domain.execution:Execution.StatusChanged	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3230303937362b30303a3030227d2c227068617365223a322c227061746368223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e537461747573222c225f646174615f223a224541493d227d2c226163746f72223a22227d	6
aex-round2-3	1	ledger.domain.execution:Execution.Created	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3230343738352b30303a3030227d2c226f726967696e61746f725f746f706963223a226c65646765722e646f6d61696e2e657865637574696f6e3a457865637574696f6e222c226b696e64223a224167656e74457865637574696f6e222c226170695f76657273696f6e223a226167656e7469632e737469676d65722e61692f7631222c226d65746164617461223a7b225f747970655f223a2270623a6c65646765722e6170692e636f6d6d6f6e732e76312e4170695265736f757263654d65746164617461222c225f646174615f223a22476778685a586774636d3931626d51794c544d7945516f485a6d6c34644856795a524947636d3931626d5179227d2c2273706563223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e53706563222c225f646174615f223a22456764685a3256756443307a47676479623356755a4341794d6764306232746c6269307a227d2c226163746f72223a22227d	7
aex-round2-3	2	ledger.domain.execution:Execution.StatusChanged	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3230373633322b30303a3030227d2c227068617365223a322c227061746368223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e537461747573222c225f646174615f223a224541493d227d2c226163746f72223a22227d	8
aex-round2-4	1	ledger.domain.execution:Execution.Created	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3231323839392b30303a3030227d2c226f726967696e61746f725f746f706963223a226c65646765722e646f6d61696e2e657865637574696f6e3a457865637574696f6e222c226b696e64223a224167656e74457865637574696f6e222c226170695f76657273696f6e223a226167656e7469632e737469676d65722e61692f7631222c226d65746164617461223a7b225f747970655f223a2270623a6c65646765722e6170692e636f6d6d6f6e732e76312e4170695265736f757263654d65746164617461222c225f646174615f223a22476778685a586774636d3931626d51794c54517945516f485a6d6c34644856795a524947636d3931626d5179227d2c2273706563223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e53706563222c225f646174615f223a22456764685a3256756443303047676479623356755a4341794d6764306232746c62693030227d2c226163746f72223a22227d	9
aex-round2-4	2	ledger.domain.execution:Execution.StatusChanged	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3231343335382b30303a3030227d2c227068617365223a322c227061746368223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e537461747573222c225f646174615f223a224541493d227d2c226163746f72223a22227d	10
aex-round2-5	1	ledger.domain.execution:Execution.Created	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3231363638392b30303a3030227d2c226f726967696e61746f725f746f706963223a226c65646765722e646f6d61696e2e657865637574696f6e3a457865637574696f6e222c226b696e64223a224167656e74457865637574696f6e222c226170695f76657273696f6e223a226167656e7469632e737469676d65722e61692f7631222c226d65746164617461223a7b225f747970655f223a2270623a6c65646765722e6170692e636f6d6d6f6e732e76312e4170695265736f757263654d65746164617461222c225f646174615f223a22476778685a586774636d3931626d51794c54557945516f485a6d6c34644856795a524947636d3931626d5179227d2c2273706563223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e53706563222c225f646174615f223a22456764685a3256756443303147676479623356755a4341794d6764306232746c62693031227d2c226163746f72223a22227d	11
aex-round2-5	2	ledger.domain.execution:Execution.StatusChanged	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3232343234342b30303a3030227d2c227068617365223a322c227061746368223a7b225f747970655f223a2270623a6c65646765722e6170692e6167656e74657865637574696f6e2e76312e4167656e74457865637574696f6e537461747573222c225f646174615f223a224541493d227d2c226163746f72223a22227d	12
aex-round2-0	3	ledger.domain.execution:Execution.Completed	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3232383937362b30303a3030227d2c227068617365223a332c226f7574707574223a7b22616e73776572223a34327d2c226572726f72223a6e756c6c2c22726561736f6e223a22222c226163746f72223a22227d	13
aex-round2-1	3	ledger.domain.execution:Execution.Completed	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3233323836392b30303a3030227d2c227068617365223a342c226f7574707574223a6e756c6c2c226572726f72223a7b2274797065223a22546f6f6c4572726f72222c226d657373616765223a2269742062726f6b65222c2264657461696c73223a7b7d7d2c22726561736f6e223a22222c226163746f72223a22227d	14
aex-round2-2	3	ledger.domain.execution:Execution.Completed	\\x7b2274696d657374616d70223a7b225f747970655f223a226461746574696d655f69736f222c225f646174615f223a22323032362d31322d30335431323a35333a31362e3233363731332b30303a3030227d2c227068617365223a352c226f7574707574223a6e756c6c2c226572726f72223a6e756c6c2c22726561736f6e223a2261736b656420746f222c226163746f72223a22227d	15
\.


--
-- Data for Name: ledger_keys; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.ledger_keys (name, value) FROM stdin;
encryption	off
\.


--
-- Data for Name: ledger_secret_keys; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.ledger_secret_keys (execution_id, data_key) FROM stdin;
\.


--
-- Data for Name: view_audit; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_audit (execution_id, kind, phase, completed_at, has_callback, outcome, attempts, delivered_at) FROM stdin;
aex-round2-0	AgentExecution	EXECUTION_COMPLETED	2026-12-03 12:53:16.228976+00	t	\N	0	\N
aex-round2-1	AgentExecution	EXECUTION_FAILED	2026-12-03 12:53:16.232869+00	t	\N	0	\N
aex-round2-2	AgentExecution	EXECUTION_CANCELLED	2026-12-03 12:53:16.236713+00	t	\N	0	\N
\.


--
-- Data for Name: view_audit_open; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_audit_open (execution_id, kind, has_callback) FROM stdin;
aex-round2-3	AgentExecution	t
aex-round2-4	AgentExecution	t
aex-round2-5	AgentExecution	t
\.


--
-- Data for Name: view_audit_tracking; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_audit_tracking (application_name, notification_id) FROM stdin;
__migration__	1
Ledger	15
\.


--
-- Data for Name: view_status; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_status (id, kind, phase, agent_id, workflow_id, workflow_instance_id, org, labels, created_at, updated_at, completed_at, has_callback, version) FROM stdin;
aex-round2-0	AgentExecution	EXECUTION_COMPLETED	agent-0	\N	\N	\N	{"fixture": "round2"}	2026-12-03 12:53:16.162236+00	2026-12-03 12:53:16.228976+00	2026-12-03 12:53:16.228976+00	t	3
aex-round2-1	AgentExecution	EXECUTION_FAILED	agent-1	\N	\N	\N	{"fixture": "round2"}	2026-12-03 12:53:16.180944+00	2026-12-03 12:53:16.232869+00	2026-12-03 12:53:16.232869+00	t	3
aex-round2-2	AgentExecution	EXECUTION_CANCELLED	agent-2	\N	\N	\N	{"fixture": "round2"}	2026-12-03 12:53:16.192805+00	2026-12-03 12:53:16.236713+00	2026-12-03 12:53:16.236713+00	t	3
aex-round2-3	AgentExecution	EXECUTION_IN_PROGRESS	agent-3	\N	\N	\N	{"fixture": "round2"}	2026-12-03 12:53:16.204785+00	2026-12-03 12:53:16.207632+00	\N	t	2
aex-round2-4	AgentExecution	EXECUTION_IN_PROGRESS	agent-4	\N	\N	\N	{"fixture": "round2"}	2026-12-03 12:53:16.212899+00	2026-12-03 12:53:16.214358+00	\N	t	2
aex-round2-5	AgentExecution	EXECUTION_IN_PROGRESS	agent-5	\N	\N	\N	{"fixture": "round2"}	2026-12-03 12:53:16.216689+00	2026-12-03 12:53:16.224244+00	\N	t	2
\.


--
-- Data for Name: view_status_counts; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_status_counts (kind, phase, n) FROM stdin;
AgentExecution	EXECUTION_IN_PROGRESS	3
AgentExecution	EXECUTION_COMPLETED	1
AgentExecution	EXECUTION_FAILED	1
AgentExecution	EXECUTION_CANCELLED	1
\.


--
-- Data for Name: view_status_labels; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_status_labels (execution_id, key, value, created_at) FROM stdin;
aex-round2-0	fixture	round2	2026-12-03 12:53:16.162236+00
aex-round2-1	fixture	round2	2026-12-03 12:53:16.180944+00
aex-round2-2	fixture	round2	2026-12-03 12:53:16.192805+00
aex-round2-3	fixture	round2	2026-12-03 12:53:16.204785+00
aex-round2-4	fixture	round2	2026-12-03 12:53:16.212899+00
aex-round2-5	fixture	round2	2026-12-03 12:53:16.216689+00
\.


--
-- Data for Name: view_status_tracking; Type: TABLE DATA; Schema: round2_fixture_schema; Owner: -
--

COPY round2_fixture_schema.view_status_tracking (application_name, notification_id) FROM stdin;
__migration__	1
Ledger	15
\.


--
-- Name: dispatcher_events_notification_id_seq; Type: SEQUENCE SET; Schema: round2_fixture_schema; Owner: -
--

SELECT pg_catalog.setval('round2_fixture_schema.dispatcher_events_notification_id_seq', 1, false);


--
-- Name: ledger_events_notification_id_seq; Type: SEQUENCE SET; Schema: round2_fixture_schema; Owner: -
--

SELECT pg_catalog.setval('round2_fixture_schema.ledger_events_notification_id_seq', 15, true);


--
-- Name: dispatcher_events dispatcher_events_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.dispatcher_events
    ADD CONSTRAINT dispatcher_events_pkey PRIMARY KEY (originator_id, originator_version);


--
-- Name: dispatcher_tracking dispatcher_tracking_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.dispatcher_tracking
    ADD CONSTRAINT dispatcher_tracking_pkey PRIMARY KEY (application_name);


--
-- Name: ledger_events ledger_events_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.ledger_events
    ADD CONSTRAINT ledger_events_pkey PRIMARY KEY (originator_id, originator_version);


--
-- Name: ledger_keys ledger_keys_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.ledger_keys
    ADD CONSTRAINT ledger_keys_pkey PRIMARY KEY (name);


--
-- Name: ledger_secret_keys ledger_secret_keys_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.ledger_secret_keys
    ADD CONSTRAINT ledger_secret_keys_pkey PRIMARY KEY (execution_id);


--
-- Name: view_audit_open view_audit_open_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_audit_open
    ADD CONSTRAINT view_audit_open_pkey PRIMARY KEY (execution_id);


--
-- Name: view_audit view_audit_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_audit
    ADD CONSTRAINT view_audit_pkey PRIMARY KEY (execution_id);


--
-- Name: view_audit_tracking view_audit_tracking_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_audit_tracking
    ADD CONSTRAINT view_audit_tracking_pkey PRIMARY KEY (application_name);


--
-- Name: view_status_counts view_status_counts_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_status_counts
    ADD CONSTRAINT view_status_counts_pkey PRIMARY KEY (kind, phase);


--
-- Name: view_status_labels view_status_labels_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_status_labels
    ADD CONSTRAINT view_status_labels_pkey PRIMARY KEY (key, value, created_at, execution_id);


--
-- Name: view_status view_status_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_status
    ADD CONSTRAINT view_status_pkey PRIMARY KEY (id);


--
-- Name: view_status_tracking view_status_tracking_pkey; Type: CONSTRAINT; Schema: round2_fixture_schema; Owner: -
--

ALTER TABLE ONLY round2_fixture_schema.view_status_tracking
    ADD CONSTRAINT view_status_tracking_pkey PRIMARY KEY (application_name);


--
-- Name: dispatcher_events_notification_id_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE UNIQUE INDEX dispatcher_events_notification_id_idx ON round2_fixture_schema.dispatcher_events USING btree (notification_id);


--
-- Name: ledger_events_notification_id_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE UNIQUE INDEX ledger_events_notification_id_idx ON round2_fixture_schema.ledger_events USING btree (notification_id);


--
-- Name: view_audit_completed_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE INDEX view_audit_completed_idx ON round2_fixture_schema.view_audit USING btree (completed_at, outcome);


--
-- Name: view_audit_pending_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE INDEX view_audit_pending_idx ON round2_fixture_schema.view_audit USING btree (completed_at, execution_id) WHERE ((outcome IS NULL) OR (outcome = 'parked'::text));


--
-- Name: view_status_created_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE INDEX view_status_created_idx ON round2_fixture_schema.view_status USING btree (created_at, id);


--
-- Name: view_status_org_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE INDEX view_status_org_idx ON round2_fixture_schema.view_status USING btree (org, created_at, id);


--
-- Name: view_status_phase_idx; Type: INDEX; Schema: round2_fixture_schema; Owner: -
--

CREATE INDEX view_status_phase_idx ON round2_fixture_schema.view_status USING btree (phase, created_at, id);


--
-- PostgreSQL database dump complete
--

\unrestrict ax5WYE51Q4cVrLzm6XM0YA2vKjxdNCsOueWzuekeMpsfLxhwQ3mpHRaHc9D4HyL

