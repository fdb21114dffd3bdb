"""Typed keys for everything shared through the aiohttp application."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from consumer.audit import AuditLog
from consumer.deadletters import DeadLetters
from consumer.hooks import EventHooks
from consumer.index import TagIndex
from consumer.intents import DeletionIntents
from consumer.latest import LatestKeeper
from consumer.metrics import Metrics
from consumer.pipelining import SharedPipeline
from consumer.policy import PolicySet
from consumer.pulls import PullFilter
from consumer.reconcile import Reconciler
from consumer.rediskeys import RedisKeys
from consumer.registry_client import RegistryClient
from consumer.retention import RetentionPlanner
from consumer.revocation import RevocationStore
from consumer.settings import Settings
from consumer.state import ServiceState
from consumer.tokens import TokenVerifier

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
KEYS = web.AppKey("redis_keys", RedisKeys)
REDIS = web.AppKey("redis", Redis)
# The webhook's hot path to Redis (index scripts, revocation checks), on its own connection.
PIPELINE = web.AppKey("redis_pipeline", SharedPipeline)
INDEX = web.AppKey("index", TagIndex)
VERIFIER = web.AppKey("verifier", TokenVerifier)
HOOKS = web.AppKey("event_hooks", EventHooks)
PULLS = web.AppKey("pull_filter", PullFilter)
STATE = web.AppKey("state", ServiceState)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)
POLICIES = web.AppKey("policies", PolicySet)
AUDIT = web.AppKey("audit", AuditLog)
INTENTS = web.AppKey("deletion_intents", DeletionIntents)
LATEST = web.AppKey("latest", LatestKeeper)
# Set only when ``registry:`` is configured.
REGISTRY_CLIENT = web.AppKey("registry_client", RegistryClient)
RECONCILER = web.AppKey("reconciler", Reconciler)
RETENTION = web.AppKey("retention", RetentionPlanner)
# The registry token server's keys (forward-auth); set only when ``registry_auth`` is configured.
REGISTRY_VERIFIER = web.AppKey("registry_verifier", TokenVerifier)
REVOCATIONS = web.AppKey("revocations", RevocationStore)
