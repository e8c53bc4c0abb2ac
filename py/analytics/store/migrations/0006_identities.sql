-- Which identified user an anonymous id belongs to, per customer: written by Segment's
-- identify and alias calls, Segment events carrying both ids, and PostHog's $identify and
-- $create_alias events. The first link of an anonymous id wins (a retry or a later identify
-- changes nothing), so counts made from it stay put. unique_users counts an event's user_id
-- through it. No traits or person properties are kept.
CREATE TABLE identities (
    customer_id  bigint NOT NULL,
    anonymous_id text NOT NULL,
    user_id      text NOT NULL,
    first_seen   timestamptz NOT NULL,
    PRIMARY KEY (customer_id, anonymous_id)
);
