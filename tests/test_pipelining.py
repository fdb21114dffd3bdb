"""The webhook's hot path to Redis: a lean pipelined connection, against a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.exceptions
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from consumer.connections import Endpoint
from consumer.pipelining import RedisPyLink, RespLink, SharedPipeline, link_for
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port
from tests.support.redis_server import RedisServer
from tests.support.tls import make_tls_files


async def test_callers_of_one_loop_turn_share_one_write_and_get_their_own_replies(redis_client: Redis) -> None:
    pipeline = SharedPipeline.over(redis_client)
    try:
        await redis_client.config_resetstat()
        replies = await asyncio.gather(*(
            pipeline.send([("SET", f"p:{i}", i), ("INCRBY", f"p:{i}", 10), ("GET", f"p:{i}")]) for i in range(50)
        ))
        assert replies == [[b"OK", 10 + i, str(10 + i).encode()] for i in range(50)]
    finally:
        await pipeline.aclose()


async def test_error_replies_are_returned_in_place_and_mapped_to_redis_py_classes(redis_client: Redis) -> None:
    pipeline = SharedPipeline.over(redis_client)
    try:
        await redis_client.set("p:str", "x")
        ok, wrong_type, no_script, after = await pipeline.send([
            ("SET", "p:a", "1"), ("INCR", "p:str"), ("EVALSHA", "0" * 40, 0), ("GET", "p:a"),
        ])
        assert ok == b"OK" and after == b"1"
        assert isinstance(wrong_type, redis.exceptions.ResponseError)
        assert isinstance(no_script, redis.exceptions.NoScriptError)  # TagIndex reloads its script on this
    finally:
        await pipeline.aclose()


async def test_a_stopped_redis_raises_connection_error_and_the_link_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        async with Redis.from_url(server.url, socket_timeout=1.0) as client:
            pipeline = SharedPipeline.over(client)
            try:
                assert await pipeline.send([("PING",)]) == [b"PONG"]
                server.stop()
                with pytest.raises(redis.exceptions.ConnectionError):
                    await asyncio.gather(pipeline.send([("PING",)]), pipeline.send([("PING",)]))
                with pytest.raises(redis.exceptions.ConnectionError):  # connecting fails too, as an error
                    await pipeline.send([("PING",)])
                server.start()
                assert await pipeline.send([("SET", "back", "1"), ("GET", "back")]) == [b"OK", b"1"]
            finally:
                await pipeline.aclose()
    finally:
        server.stop()


async def test_a_server_that_never_answers_times_out_every_waiting_caller() -> None:
    """A reply later than socket_timeout is a TimeoutError (the webhook answers 503), never a hang."""
    received = bytearray()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        received.extend(await reader.read(65536))

    server = await asyncio.start_server(silent, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    link = RespLink(Endpoint(LOOPBACK, port), timeout_seconds=0.2)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(link.execute([("PING",)]), link.execute([("PING",)]), return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in results)
        assert loop.time() - started < 2.0
        assert received.startswith(b"*1\r\n$4\r\nPING\r\n")
    finally:
        await link.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_password_and_database_of_the_url_are_used(tmp_path: Path) -> None:
    port = free_port()
    proc = ManagedProcess(
        "redis-server",
        ["redis-server", "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
         "--requirepass", "s3cret", "--dir", str(tmp_path)],
        tmp_path / "redis.log",
    )
    proc.start()
    try:
        wait_for_port(LOOPBACK, port, timeout=10, process=proc)
        async with Redis.from_url(f"redis://:s3cret@{LOOPBACK}:{port}/3") as client:
            pipeline = SharedPipeline.over(client)
            try:
                await pipeline.send([("SET", "where", "db3")])
            finally:
                await pipeline.aclose()
            assert await client.get("where") == b"db3"  # the client is on db 3 too
        async with Redis.from_url(f"redis://:wrong@{LOOPBACK}:{port}/0") as bad:
            pipeline = SharedPipeline.over(bad)
            try:
                with pytest.raises(redis.exceptions.AuthenticationError):
                    await pipeline.send([("PING",)])
            finally:
                await pipeline.aclose()
    finally:
        proc.stop()


async def test_tcp_tls_and_unix_urls_get_the_pipelined_link_anything_else_redis_py() -> None:
    class Custom(Connection):
        pass

    clients = [Redis.from_url("redis://127.0.0.1:1/0"), Redis.from_url("rediss://127.0.0.1:1/0"),
               Redis.from_url("unix:///tmp/nothing.sock"),
               Redis(connection_pool=ConnectionPool(connection_class=Custom, host="127.0.0.1", port=1))]
    try:
        assert [type(link_for(c)).__name__ for c in clients] == ["RespLink", "RespLink", "RespLink", "RedisPyLink"]
    finally:
        for client in clients:
            await client.aclose()


async def test_tls_redis_is_verified_with_the_urls_settings(tmp_path: Path) -> None:
    """rediss:// takes the same pipelined link, with redis-py's TLS settings: a server the CA did not sign fails."""
    tls = make_tls_files(tmp_path / "tls")
    with RedisServer(tmp_path / "redis", tls=tls) as server:
        async with Redis.from_url(server.url, socket_timeout=2.0) as client:
            pipeline = SharedPipeline.over(client)
            try:
                assert await pipeline.send([("SET", "over", "tls"), ("GET", "over")]) == [b"OK", b"tls"]
            finally:
                await pipeline.aclose()
        stranger = make_tls_files(tmp_path / "other", ca_name="someone else")
        async with Redis.from_url(server.url.replace(str(tls.ca), str(stranger.ca))) as client:
            pipeline = SharedPipeline.over(client)
            try:
                with pytest.raises(redis.exceptions.ConnectionError):
                    await pipeline.send([("PING",)])
            finally:
                await pipeline.aclose()


async def test_the_redis_py_link_keeps_the_same_contract(redis_client: Redis) -> None:
    pipeline = SharedPipeline(RedisPyLink(redis_client))
    await redis_client.set("p:str", "x")
    replies = await asyncio.gather(pipeline.send([("SET", "q", "1")]), pipeline.send([("INCR", "p:str")]))
    assert replies[0] == [True]  # redis-py's own reply conversion
    assert isinstance(replies[1][0], redis.exceptions.ResponseError)


async def test_a_command_resp_cannot_carry_fails_its_batch_instead_of_hanging(redis_client: Redis) -> None:
    pipeline = SharedPipeline.over(redis_client)
    try:
        assert await pipeline.send([("PING",)]) == [b"PONG"]  # connected: the next batch is written at once
        results = await asyncio.wait_for(
            asyncio.gather(pipeline.send([("SET", "k", None)]), pipeline.send([("PING",)]), return_exceptions=True),
            timeout=5,
        )
        assert all(isinstance(r, TypeError) for r in results)
        assert await pipeline.send([("PING",)]) == [b"PONG"]  # and the link still works
    finally:
        await pipeline.aclose()
