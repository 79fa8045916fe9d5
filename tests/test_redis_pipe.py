"""gateway.redis: the shared, auto-pipelined Redis connection, against a real redis-server.

Round trips are counted the way the server sees them: INFO stats
``total_reads_processed`` grows by one per read event, and a client that sends a
pipeline and waits for its replies makes one."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import redis as shared


@pytest.fixture
async def probe(redis_server):
    """A plain redis-py client of the test's own, to look at what the pipe did."""
    client = aioredis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def reads(client: aioredis.Redis) -> int:
    """The server's read events so far, less the one of this INFO."""
    return int((await client.info("stats"))["total_reads_processed"]) - 1


async def test_calls_of_concurrent_callers_in_one_tick_go_in_one_pipeline(redis_server, probe):
    one = shared.connect(redis_server.url)
    two = shared.connect(redis_server.url)  # another plugin, the same URL: the same connection
    try:
        await one.ping()  # connected (the connection's greeting is not what is counted)
        before = await reads(probe)
        pipelines = one.stats()["pipelines"]

        async def caller(index: int) -> list[object]:
            handle = one if index % 2 else two
            first = handle.call("INCR", "counter")
            script = handle.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            second = script(keys=["total"], args=[index])
            return [await first, await second]

        replies = await asyncio.gather(*(caller(index) for index in range(50)))
        after = await reads(probe)
        assert after - before - 1 <= 2  # one pipeline (the scripts: EVALSHA, then one EVAL pipeline)
        assert one.stats() == two.stats() and one.stats()["pipelines"] - pipelines <= 2
        assert sorted(reply[0] for reply in replies) == list(range(1, 51))
        assert int(await probe.get("total")) == sum(range(50))

        before = await reads(probe)
        await asyncio.gather(*(caller(index) for index in range(50)))
        assert await reads(probe) - before - 1 == 1  # the script is cached now: EVALSHA, one pipeline
    finally:
        await one.close()
        await two.close()


async def test_a_commands_error_reaches_only_its_caller(redis_server, probe):
    handle = shared.connect(redis_server.url)
    try:
        await probe.set("text", "not a number")
        good = handle.call("SET", "a", "1")
        bad = handle.call("INCR", "text")
        later = handle.call("GET", "a")
        assert await good is True or await good == b"OK"
        with pytest.raises(ResponseError):
            await bad
        assert await later == b"1"
        failing = handle.script("return redis.error_reply('nope')")
        with pytest.raises(ResponseError, match="nope"):
            await failing()
        assert await handle.call("GET", "a") == b"1"  # the connection is still in step
    finally:
        await handle.close()


async def test_arguments_reach_redis_as_text_of_their_type_and_other_types_are_refused(redis_server, probe):
    class Name(str):
        pass

    class Count(int):
        pass

    handle = shared.connect(redis_server.url)
    try:
        arguments = {
            "str": ("héllo", b"h\xc3\xa9llo"),
            "int": (-42, b"-42"),
            "big": (2**70, b"1180591620717411303424"),
            "float": (0.1, b"0.1"),
            "timestamp": (1733212345.123, b"1733212345.123"),
            "bytes": (b"\x00\xffraw", b"\x00\xffraw"),
            "bytearray": (bytearray(b"ba"), b"ba"),
            "memoryview": (memoryview(b"mv"), b"mv"),
            "str subclass": (Name("sub"), b"sub"),
            "int subclass": (Count(7), b"7"),
        }
        for key, (value, _) in arguments.items():
            await handle.call("SET", key, value)
        for key, (_, stored) in arguments.items():
            assert await probe.get(key) == stored, key
        for wrong in (True, None, [1], 1j):
            with pytest.raises(shared.DataError, match="must be str, bytes, int or float"):
                await handle.call("SET", "wrong", wrong)
        assert await probe.exists("wrong") == 0
    finally:
        await handle.close()


async def test_a_pipeline_with_an_argument_hiredis_does_not_pack_is_packed_whole_in_python(redis_server, probe):
    class Name(str):
        pass

    assert shared._pack_command is not None  # the installed hiredis packs as pack() does
    handle = shared.connect(redis_server.url)
    try:
        # One pipeline: hiredis's packer refuses the subclass, so the batch is packed by pack().
        assert await asyncio.gather(
            handle.call("SET", "plain", 1.5), handle.call("SET", "sub", Name("x")), handle.call("GET", "plain")
        ) == [b"OK", b"OK", b"1.5"]
        assert await probe.get("sub") == b"x"
        assert shared._pack_command(("SET", "k", -3, 0.25, b"\r\n")) == shared.pack(("SET", "k", -3, 0.25, b"\r\n"))
    finally:
        await handle.close()


async def test_a_connection_error_reaches_every_caller_of_the_pipeline(redis_server):
    handle = shared.connect(redis_server.url, timeout_s=5)
    try:
        await handle.ping()
        batch = [handle.call("SET", "a", "1"), handle.call("DEBUG", "SLEEP", "2"), handle.call("GET", "a")]
        await asyncio.sleep(0.3)  # sent; Redis sleeps before answering any of them
        redis_server.stop()
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in results), results
        assert handle.stats()["failures"] == 1
        refused = await asyncio.gather(handle.call("GET", "a"), handle.call("PING"), return_exceptions=True)
        assert all(isinstance(result, shared.ERRORS) for result in refused), refused
        redis_server.start()
        assert await handle.call("PING") == b"PONG"  # a new connection, once Redis is back
        assert await handle.call("SET", "b", "2") == b"OK"
    finally:
        await handle.close()


async def test_each_caller_waits_at_most_its_own_timeout(redis_server):
    handle = shared.connect(redis_server.url, timeout_s=3)
    try:
        await handle.ping()
        slow = handle.call("DEBUG", "SLEEP", "0.5")
        impatient = handle.call("PING", timeout_s=0.1)
        patient = handle.call("PING")
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError):
            await impatient
        assert asyncio.get_running_loop().time() - started < 0.4
        assert await slow == b"OK" and await patient == b"PONG"
        # Calls stuck behind a slow one fail at their own timeouts; their replies come later.
        stuck = [handle.call("DEBUG", "SLEEP", "1", timeout_s=0.2), handle.call("PING", timeout_s=0.2)]
        results = await asyncio.gather(*stuck, return_exceptions=True)
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        await asyncio.sleep(1)
        assert await handle.call("PING") == b"PONG"  # the late replies did not shift later ones
    finally:
        await handle.close()


async def test_writes_nobody_awaits_are_flushed_when_the_last_handle_closes(redis_server, probe):
    # timeouts far above what 2000 writes take on a loaded machine: this is about the flush at close
    handle = shared.connect(redis_server.url, timeout_s=30)
    other = shared.connect(redis_server.url, timeout_s=30)
    failures: list[BaseException] = []
    for index in range(2000):  # more than one pipeline's worth
        future = handle.call("SET", f"key:{index}", index)
        future.add_done_callback(lambda done: done.exception() and failures.append(done.exception()))
    await handle.close()  # another handle is open: waits for the writes, keeps the connection
    assert await probe.dbsize() == 2000
    other.call("SET", "last", "1")
    await other.close()
    assert await probe.get("last") == b"1" and failures == []
    with pytest.raises(RedisConnectionError):
        handle.call("PING")


async def test_a_write_queued_before_a_read_is_seen_by_it(redis_server):
    handle = shared.connect(redis_server.url)
    try:
        handle.call("SET", "k", "v1")
        assert await handle.call("GET", "k") == b"v1"
        handle.call("SET", "k", "v2")
        await asyncio.sleep(0)
        handle.call("APPEND", "k", "!")
        assert await handle.call("GET", "k") == b"v2!"
    finally:
        await handle.close()


async def test_cancelled_callers_do_not_break_a_pipeline(redis_server, probe):
    handle = shared.connect(redis_server.url)
    try:
        await handle.ping()

        async def setter(key: str) -> object:
            return await handle.call("SET", key, "1")

        tasks = [asyncio.create_task(setter(f"k{index}")) for index in range(10)]
        await asyncio.sleep(0)  # every task queued its SET; none is sent yet
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [isinstance(result, asyncio.CancelledError) for result in results] == [True, False] * 5
        assert all(result == b"OK" for result in results[1::2])
        assert sorted(await probe.keys("k*")) == [f"k{index}".encode() for index in range(1, 10, 2)]

        # A caller cancelled while its pipeline is in flight: its reply is dropped, the others' arrive.
        sleeper = asyncio.create_task(setter("late"))
        slow = handle.call("DEBUG", "SLEEP", "0.2")
        after = handle.call("GET", "k1")
        await asyncio.sleep(0.05)
        sleeper.cancel()
        assert await slow == b"OK" and await after == b"1"
        assert await handle.call("GET", "k3") == b"1"
    finally:
        await handle.close()


async def test_a_script_is_evaled_again_after_redis_lost_its_scripts(redis_server, probe):
    handle = shared.connect(redis_server.url)
    try:
        double = handle.script("return tonumber(ARGV[1]) * 2")
        assert await double(args=[21]) == 42
        await probe.script_flush()
        replies = await asyncio.gather(double(args=[1]), double(args=[2]), handle.call("PING"))
        assert replies == [2, 4, b"PONG"]
        redis_server.stop()
        redis_server.start()  # a restart empties the script cache as well
        with pytest.raises(shared.ERRORS):
            await double(args=[3])  # the first call after the restart meets the dead connection
        assert await double(args=[5]) == 10
    finally:
        await handle.close()


async def test_a_call_queued_behind_a_slow_one_keeps_its_whole_timeout(redis_server):
    handle = shared.connect(redis_server.url, timeout_s=3)
    try:
        await handle.ping()
        slow = handle.call("DEBUG", "SLEEP", "0.6")  # in flight: later calls wait behind it in line
        await asyncio.sleep(0.05)
        early = handle.call("PING", timeout_s=0.3)
        await asyncio.sleep(0.2)
        late = handle.call("PING", timeout_s=0.3)  # 0.2 s later: fails 0.3 s after *its* start
        loop = asyncio.get_running_loop()
        with pytest.raises(RedisTimeoutError):
            await early
        failed_early_at = loop.time()
        with pytest.raises(RedisTimeoutError):
            await late
        assert loop.time() - failed_early_at > 0.1
        assert await slow == b"OK"
        assert await handle.call("PING") == b"PONG"
    finally:
        await handle.close()


async def test_the_urls_credentials_and_db_set_the_connection_up(redis_server, probe):
    await probe.execute_command("ACL", "SETUSER", "alice", "on", ">wonderland", "~*", "+@all")
    await probe.config_set("requirepass", "s3cret")  # the default user now needs a password too
    address = f"127.0.0.1:{redis_server.port}"
    for url, db in ((f"redis://:s3cret@{address}/3", 3), (f"redis://alice:wonderland@{address}/5", 5)):
        handle = shared.connect(url)
        try:
            assert await handle.call("SET", "where", url) == b"OK"
        finally:
            await handle.close()
        await probe.select(db)
        assert await probe.get("where") == url.encode()
    await probe.select(0)
    assert await probe.get("where") is None

    refused = shared.connect(f"redis://:wrong@{address}/0")
    try:
        results = await asyncio.gather(refused.call("PING"), refused.call("GET", "where"), return_exceptions=True)
        assert all(isinstance(result, shared.ERRORS) for result in results), results
        assert "wrong" not in " ".join(str(result) for result in results)  # the URL's secret stays out of errors
    finally:
        await refused.close()


async def test_figures_count_pipelines_and_commands_per_server(redis_server):
    handle = shared.connect(redis_server.url)
    try:
        await asyncio.gather(*(handle.call("PING") for _ in range(5)))
        ((server, counts),) = shared.figures().items()
        assert server == f"127.0.0.1:{redis_server.port}/0"  # host, port, db: never the URL's credentials
        assert counts["commands"] == 5 and counts["pipelines"] == 1 and counts["failed_pipelines"] == 0
    finally:
        await handle.close()
    assert shared.figures() == {}  # the last handle closed the connection


# -- the plugins on one Redis, through the gateway --------------------------------------


def chain_on_redis(url: str, tmp_path) -> dict:
    return {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [
            {"use": "ratelimit", "config": {"backend": url, "requests_per_minute": 1000, "probe_interval_s": 60}},
            {"use": "cache", "config": {"backend": url, "backend_timeout_s": 2}},
            {"use": "cost", "config": {"store": url, "ledger": str(tmp_path / "usage.db"),
                                       "budget_usd_per_day": 100, "redis_timeout_s": 2}},  # fmt: skip
        ],
    }


async def pipelines_of(gw, request) -> int:
    """Round trips (pipelines) one call through the gateway made, its writes included."""
    (before,) = shared.figures().values()
    await request()
    for handle in gw.gateway.redis_handles:
        await handle.flush()  # the writes nobody waited for
    (after,) = shared.figures().values()
    return after["pipelines"] - before["pipelines"]


async def test_the_chain_shares_one_connection_and_writes_after_the_answer_in_one_round_trip(tmp_path, redis_server):
    from gateway.testing import run_gateway

    async with run_gateway(chain_on_redis(redis_server.url, tmp_path), tmp_path) as gw:
        client = gw.openai()

        async def ask(content: str) -> str | None:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
            )
            return raw.headers.get("x-gateway-cache")

        assert len(gw.gateway.redis_handles) == 3 and len(shared.figures()) == 1  # three plugins, one connection
        await pipelines_of(gw, lambda: ask("warm up"))  # scripts cached (EVAL once each), connection open
        # one at a time: ratelimit's decision (deferred), the cache's GET and cost's reserve
        # in one pipeline before the upstream; the cache's store and cost's settle together after
        assert await pipelines_of(gw, lambda: ask("a new question")) == 2
        # A hit: one round trip. Cost only gives its reservation back, with the next reserve.
        assert await pipelines_of(gw, lambda: ask("a new question")) == 1
        assert await pipelines_of(gw, lambda: ask("a new question")) == 1  # ...which carries the last hit's
        async with aiohttp.ClientSession() as session:
            quota_url = f"{gw.admin_url}/usage/quota?client=127.0.0.1"
            async with session.get(quota_url) as reply:  # a quota sends what waits first
                assert (await reply.json())["day"]["reserved_usd"] == 0
            assert await pipelines_of(gw, lambda: ask("a new question")) == 1
            # alone, a waiting release leaves within cost's RELEASE_WITHIN_S
            assert await pipelines_of(gw, lambda: asyncio.sleep(0.2)) == 1
        # concurrent requests share pipelines
        contents = [f"question {index}" for index in range(20)]
        trips = await pipelines_of(gw, lambda: asyncio.gather(*(ask(content) for content in contents)))
        assert trips < 20 * 2, trips  # one at a time they would make 2 each
        async with aiohttp.ClientSession() as session, session.get(f"{gw.admin_url}/stats") as reply:
            (figures,) = (await reply.json())["redis"].values()
        assert figures["commands"] > figures["pipelines"] and figures["failed_pipelines"] == 0


async def test_a_reservation_waiting_to_be_given_back_is_sent_at_shutdown(tmp_path, redis_server, probe, monkeypatch):
    from gateway.testing import run_gateway
    from gateway_plugins.cost import budgets

    monkeypatch.setattr(budgets, "RELEASE_WITHIN_S", 60.0)  # only the shutdown can send it
    async with run_gateway(chain_on_redis(redis_server.url, tmp_path), tmp_path) as gw:
        client = gw.openai()
        for _ in range(2):  # a miss, then a hit: its $0 settle waits for the next reserve
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "bye"}])
        assert await probe.zcard("gateway:cost:reserved:127.0.0.1") == 1
    assert await probe.zcard("gateway:cost:reserved:127.0.0.1") == 0  # shutdown sent it


async def test_closing_does_not_wait_for_replies_of_calls_that_timed_out(redis_server):
    """A Redis that stops answering must not hold shutdown: once every queued call has
    failed at its timeout, close() returns, whatever Redis does next."""
    handle = shared.connect(redis_server.url, timeout_s=0.2)
    await handle.ping()
    writes = [handle.call("DEBUG", "SLEEP", "3"), handle.call("SET", "k", "v")]
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(handle.close(), 2)
    assert asyncio.get_running_loop().time() - started < 1
    assert all(isinstance(future.exception(), RedisTimeoutError) for future in writes)


async def test_a_connection_whose_replies_stop_coming_is_replaced():
    """A server that takes commands and never answers (a dead peer, a failover behind
    the same address): once the next reply is overdue by the longest timeout of any
    call, the connection is dropped and the next call makes a new one."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    handle = shared.connect(url, timeout_s=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await handle.call("PING")
        await asyncio.sleep(0.3)  # one more timeout without a reply: the dead connection is dropped
        with pytest.raises(RedisTimeoutError):
            await handle.call("PING")
        assert len(accepted) == 2
        assert handle.stats()["failures"] >= 1
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(handle.close(), 2)
