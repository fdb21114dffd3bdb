"""Typed keys for everything shared through the aiohttp application."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from consumer.deadletters import DeadLetters
from consumer.hooks import EventHooks
from consumer.index import TagIndex
from consumer.metrics import Metrics
from consumer.rediskeys import RedisKeys
from consumer.settings import Settings
from consumer.state import ServiceState
from consumer.tokens import TokenVerifier

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
KEYS = web.AppKey("redis_keys", RedisKeys)
REDIS = web.AppKey("redis", Redis)
INDEX = web.AppKey("index", TagIndex)
VERIFIER = web.AppKey("verifier", TokenVerifier)
HOOKS = web.AppKey("event_hooks", EventHooks)
STATE = web.AppKey("state", ServiceState)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)
