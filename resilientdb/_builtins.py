"""Which function calls a read-only statement may make, per dialect.

A SELECT that calls a function is read-only only when every function it calls is known not
to write. These are the built-ins known to be free of side effects (they may be volatile, as
``random()`` is, but they change nothing). Names are lower-case; a call is matched by name,
unqualified (or qualified with ``pg_catalog`` on PostgreSQL).

On PostgreSQL a name that is not here is looked up in ``pg_proc`` when a replay decision needs
it: it is harmless when no overload of that name is VOLATILE (the server refuses writes in
STABLE and IMMUTABLE functions). A name here is still refused when a VOLATILE overload of it
exists outside ``pg_catalog`` (a user may shadow a built-in). On MySQL/MariaDB and SQLite a
name that is not here is a write: their user functions may do anything.

``NEVER`` wins over everything: sequences, locks, notifications, session and server control.
Keywords that take parentheses without being calls (``IN (``, ``EXISTS (``, ``OVER (``) are
in ``NOT_CALLS``; type names with a modifier (``varchar(10)``) are harmless calls.
"""

from __future__ import annotations

__all__ = ["HARMLESS", "NEVER", "NOT_CALLS"]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Keywords followed by "(" that are syntax, not a function call (checked upper-case).
NOT_CALLS = _names(
    """
    ALL AND ANY ARRAY AS ASC BETWEEN BY CASE CROSS CUBE DESC DISTINCT ELSE END ESCAPE
    EXCEPT EXISTS FILTER FOR FROM FULL GROUP GROUPING HAVING IN INNER INTERSECT INTO IS
    JOIN LATERAL LIKE ILIKE LIMIT MATERIALIZED MINUS NATURAL NOT NULLS OFFSET ON ONLY OR
    ORDER OUTER OVER PARTITION RECURSIVE RETURNING ROLLUP ROW ROWS SELECT SETS SIMILAR
    SOME TABLE THEN UNION USING VALUES WHEN WHERE WINDOW WITH WITHIN RANGE GROUPS
    PRECEDING FOLLOWING UNBOUNDED CURRENT EXCLUDE TIES OTHERS KEY SHARE NOWAIT SKIP
    LOCKED OF AT ZONE TO COLLATE MATCH AGAINST
    """
)

# Types that take a modifier, and grammar-level functions: harmless in every dialect.
_COMMON = _names(
    """
    varchar char character nchar numeric decimal dec float real double timestamp timestamptz
    time timetz interval bit varbit binary varbinary datetime date year int integer bigint
    smallint tinyint mediumint text blob json jsonb uuid
    cast convert coalesce nullif greatest least extract position substring substr overlay
    trim count sum avg min max abs ceil ceiling floor round sign sqrt exp ln log log10 power
    pow mod pi sin cos tan asin acos atan atan2 cot degrees radians lower upper length
    char_length character_length octet_length replace concat concat_ws left right lpad rpad
    ltrim rtrim reverse repeat instr hex row_number rank dense_rank percent_rank cume_dist
    ntile lag lead first_value last_value nth_value random current_date current_time
    current_timestamp localtime localtimestamp
    """
)

HARMLESS: dict[str, frozenset[str]] = {
    "postgresql": _COMMON
    | _names(
        """
        array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg bool_and
        bool_or every bit_and bit_or stddev stddev_pop stddev_samp variance var_pop var_samp
        corr covar_pop covar_samp regr_slope percentile_cont percentile_disc mode grouping
        btrim strpos split_part initcap md5 sha224 sha256 sha384 sha512 encode decode format
        regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table
        regexp_like regexp_count regexp_instr regexp_substr starts_with translate quote_ident
        quote_literal quote_nullable to_hex ascii chr normalize unistr
        trunc div cbrt gcd lcm factorial width_bucket scale trim_scale log2
        now clock_timestamp statement_timestamp transaction_timestamp timeofday date_trunc
        date_part date_bin age make_date make_time make_timestamp make_timestamptz
        make_interval to_char to_date to_timestamp to_number timezone justify_days
        justify_hours justify_interval isfinite
        json_build_object jsonb_build_object json_build_array jsonb_build_array to_json
        to_jsonb json_extract_path jsonb_extract_path json_extract_path_text
        jsonb_extract_path_text jsonb_set jsonb_set_lax jsonb_insert json_array_length
        jsonb_array_length json_object_keys jsonb_object_keys json_each jsonb_each
        json_each_text jsonb_each_text json_array_elements jsonb_array_elements
        json_array_elements_text jsonb_array_elements_text json_typeof jsonb_typeof
        json_strip_nulls jsonb_strip_nulls jsonb_pretty row_to_json array_to_json
        json_populate_record jsonb_populate_record json_to_record jsonb_to_record
        json_to_recordset jsonb_to_recordset jsonb_path_query jsonb_path_exists
        jsonb_path_match jsonb_path_query_array jsonb_path_query_first json_object jsonb_object
        array_length array_position array_positions array_append array_prepend array_cat
        array_remove array_replace array_to_string string_to_array string_to_table unnest
        cardinality array_lower array_upper array_dims array_ndims array_fill
        generate_series generate_subscripts
        gen_random_uuid version current_database current_schema current_schemas
        pg_backend_pid pg_is_in_recovery pg_typeof pg_sleep pg_sleep_for
        pg_column_size pg_size_pretty pg_relation_size pg_total_relation_size
        pg_database_size pg_table_size pg_indexes_size
        has_table_privilege has_schema_privilege has_database_privilege
        has_column_privilege has_function_privilege to_tsvector to_tsquery plainto_tsquery
        phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd ts_headline setweight
        num_nulls num_nonnulls
        """
    ),
    "mysql": _COMMON
    | _names(
        """
        group_concat json_arrayagg json_objectagg bit_xor std stddev stddev_pop stddev_samp
        variance var_pop var_samp
        lcase ucase substring_index mid locate field find_in_set format unhex md5 sha sha1
        sha2 crc32 to_base64 from_base64 ascii ord space strcmp soundex elt quote insert
        regexp_like regexp_replace regexp_substr regexp_instr char bin oct conv truncate
        log2 rand
        now curdate current_date curtime current_time current_timestamp localtime
        localtimestamp sysdate utc_timestamp utc_date utc_time unix_timestamp from_unixtime
        month day dayofmonth dayofweek dayofyear hour minute second microsecond week
        weekday weekofyear yearweek quarter date_add date_sub adddate subdate addtime subtime
        datediff timediff timestampdiff timestampadd date_format time_format str_to_date
        makedate maketime last_day convert_tz monthname dayname to_days from_days
        to_seconds sec_to_time time_to_sec period_add period_diff get_format
        if ifnull isnull
        json_extract json_unquote json_object json_array json_contains json_contains_path
        json_keys json_length json_type json_valid json_set json_insert json_replace
        json_remove json_merge json_merge_patch json_merge_preserve json_search json_value
        json_quote json_pretty json_depth json_overlaps json_table json_exists json_query
        json_detailed json_compact json_loose
        database schema user current_user session_user system_user version connection_id
        found_rows row_count uuid uuid_short sleep charset collation coercibility
        inet_aton inet_ntoa inet6_aton inet6_ntoa is_ipv4 is_ipv6 bit_count bit_length
        char_length octet_length weight_string
        """
    ),
    "sqlite": _COMMON
    | _names(
        """
        total group_concat string_agg changes format printf glob ifnull iif instr
        last_insert_rowid like likelihood likely ltrim quote randomblob sqlite_version
        total_changes typeof unhex unicode unlikely zeroblob soundex
        datetime julianday unixepoch strftime timediff
        json json_array json_array_length json_extract json_insert json_object json_patch
        json_remove json_replace json_set json_type json_valid json_quote json_group_array
        json_group_object json_each json_tree jsonb jsonb_array jsonb_extract jsonb_insert
        jsonb_object jsonb_patch jsonb_remove jsonb_replace jsonb_set json_error_position
        log2 trunc
        pragma_table_info pragma_index_list pragma_index_info pragma_foreign_key_list
        """
    ),
}

# Never harmless, whatever the catalog says: they change data, sequences, locks, sessions,
# other sessions or the server.
NEVER = _names(
    """
    nextval setval lastval currval pg_advisory_lock pg_advisory_lock_shared
    pg_try_advisory_lock pg_try_advisory_lock_shared pg_advisory_xact_lock
    pg_advisory_xact_lock_shared pg_try_advisory_xact_lock pg_try_advisory_xact_lock_shared
    pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all pg_terminate_backend
    pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_switch_wal pg_create_restore_point
    pg_notify set_config setseed txid_current pg_current_xact_id lo_create lo_import lo_unlink
    lo_put lo_from_bytea dblink dblink_exec pg_stat_reset pg_logical_emit_message
    get_lock release_lock release_all_locks is_free_lock is_used_lock master_pos_wait
    master_gtid_wait last_insert_id load_file benchmark load_extension
    """
)
