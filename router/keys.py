"""Typed keys for everything the app shares (STYLE: one AppKey per shared object)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from router.assignment import Assigner
from router.backends.sagemaker import SageMakerClients
from router.global_rate import GlobalRates
from router.metrics import RouterMetrics
from router.redis_conn import RedisClient
from router.rollout.controller import RolloutController
from router.routing import BackendFactory, LimiterRegistry, RouterState
from router.service import InvocationService
from router.settings import Settings
from tenancy.store import ConfigStore

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", RouterMetrics)
CONFIG = web.AppKey("config", ConfigStore)
HTTP = web.AppKey("http", aiohttp.ClientSession)
SAGEMAKER = web.AppKey("sagemaker", SageMakerClients)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
BACKENDS = web.AppKey("backends", BackendFactory)
LIMITERS = web.AppKey("limiters", LimiterRegistry)
RATES = web.AppKey("rates", GlobalRates)
STATE = web.AppKey("state", RouterState)
ASSIGNER = web.AppKey("assigner", Assigner)
SERVICE = web.AppKey("service", InvocationService)
ROLLOUT = web.AppKey("rollout", RolloutController)
