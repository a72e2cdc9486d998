"""The torture tables behind the type-contract tests (docs/types.md).

`torture`: awkward values every format must carry exactly with the default `unrepresentable:
fail` (BC and far-future years included). `exotic`: values at least one format cannot carry as
a typed value (numeric NaN, ±infinity, years past 294246, multi-dimensional arrays, array
lower bounds, types the driver has no Arrow type for); exported with `unrepresentable: text`
or expected to fail.
"""

from __future__ import annotations

import psycopg

SCHEMA = r'''
CREATE TYPE mood AS ENUM ('sad', 'ok', 'very "happy", really');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);

CREATE TABLE torture (
    id integer PRIMARY KEY, customer_id integer NOT NULL,
    i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    n12 numeric(12,4), n38 numeric(38,10), nfree numeric, n50 numeric(50,5), m money,
    t text, vc varchar(20), ch char(6), ba bytea, b boolean,
    d date, tm time, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb, ai integer[], at text[], en mood, dom posint, comp pair,
    "odd, ""name""" text
);
INSERT INTO torture VALUES
(1, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(2, 1, -32768, 2147483647, '-9223372036854775808', 'NaN', 'Infinity',
    -99999999.9999, '1234567890123456789012345678.0123456789',
    '1.10000000000000000000000000000000000000000001',
    '123456789012345678901234567890123456789012345.12345', '-92233720368547758.08',
    E'quote " comma , newline \n cr \r tab \t backslash \\ é 漢字 😀', '=1+2', 'ab',
    '\x00ff5c0a22', true, '2024-02-29', '23:59:59.999999', '2024-01-01 12:34:56.789',
    '2024-06-01 12:00:00+02', '1 year 2 mons 3 days 04:05:06.789',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"x": 1.10, "y": [1e2, null], "z": "\u00e9"}',
    '{"a": [1, 2.50], "b": {"c": null}}', '{1,NULL,3}', '{"a,b",NULL,"c\"d","NULL",""}',
    'very "happy", really', 5, ROW(1, 'x,y'), '@SUM(A1)'),
(3, 1, 0, -2147483648, 9223372036854775807, '-Infinity', 'NaN', 0, 0, '0.000', 0, 0,
    '', '+1', '', '\x', false, '0044-03-15 BC', '00:00:00', '4713-01-01 00:00:00 BC',
    '12345-06-01 00:00:00+00', '-1 mons +2 days -00:00:01', '00000000-0000-0000-0000-000000000000',
    '"just a string"', 'null', '{}', '{}', 'sad', 1, ROW(NULL, NULL), '-1'),
(4, 1, 1, 1, 1, 0.1, 0.1, 0.0001, '-0.0000000001', '-1e-30', '1e40', 0.01,
    E'\tstarts with tab', E'\rcr', 'abcdef', '\x5c', NULL, '5874897-12-31', '12:00:00.5',
    '294246-12-31 23:59:59.999999', '1970-01-01 00:00:00+00', '100 hours', NULL,
    '[1, 1.0, 1.00, -0, 1E400]', '[1, 1.0, 1.00, -0]', '{-1}', '{"{}","\\"}', 'ok', 2147483647,
    ROW(-1, ''), '=HYPERLINK("http://x")'),
(5, 1, 7, 7, 7, 3.4028235e38, 1e-300, 12345678.1234, 1, '123456789.987654321', '-0.00001',
    '-1', 'NULL', 'null', 'NULL', '\x00', true, '1970-01-01', '12:34:56', '1999-12-31 23:59:59',
    '2000-01-01 00:00:00+14', '-178000000 years', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
    '{"deep": {"deeper": [[], {}, ""]}}', '[]', NULL, '{NULL}', NULL, 3, NULL, E'a\r\nb'),
(6, 1, -1, -1, -1, -0.0, -0.0, -0.5, 0.5, '-0', '0.5', 1000000, 'x', ' lead', ' ',
    '\xdeadbeef', false, '2000-02-29', '00:00:00.000001', '0001-01-01 00:00:00',
    '0001-01-01 00:00:00+00 BC', '0 seconds', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
    '1.5e-7', '1.5e-7', '{2147483647,-2147483648}', '{" "}', 'sad', 10, ROW(0, 'NULL'),
    '"quoted"');

CREATE TABLE exotic (
    id integer PRIMARY KEY, customer_id integer NOT NULL,
    nnan numeric(10,2), ninf numeric, dinf date, tsinf timestamp, tstzinf timestamptz,
    tsfar timestamp, tz timetz, ip inet, net cidr, a2 integer[], alb integer[], bits bit(3),
    m money
);
INSERT INTO exotic VALUES
(1, 1, 'NaN', 'Infinity', 'infinity', '-infinity', 'infinity', '294270-01-01',
    '12:00:00+05:30', '192.168.0.1/24', '10.0.0.0/8', '{{1,2},{3,4}}', '[0:1]={1,2}', B'101',
    '12.34'),
(2, 1, 1.5, '-Infinity', '-infinity', 'infinity', '-infinity', '2000-01-01 00:00:00',
    '00:00:00-12', '::1', '2001:db8::/32', '{{1,NULL},{NULL,4}}', '[2:3]={7,8}', B'000',
    '-0.01'),
(3, 1, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{1,2}', '{1,2}', NULL, NULL);
'''

# Columns of `torture` and `exotic` by PostgreSQL type name, for the comparisons.
TORTURE_COLUMNS = 31
TORTURE_ROWS = 6
EXOTIC_COLUMNS = 15
EXOTIC_ROWS = 3


def create_torture_tables(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
