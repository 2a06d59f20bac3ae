"""Typed keys for everything the preloader app shares."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from preloader.engine import Preloader
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress
from preloader.settings import Settings
from router.backends.sagemaker import SageMakerClients
from router.redis_conn import RedisClient
from tenancy.store import ConfigStore

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", PreloaderMetrics)
PROGRESS = web.AppKey("progress", Progress)
CONFIG = web.AppKey("config", ConfigStore)
HTTP = web.AppKey("http", aiohttp.ClientSession)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
SAGEMAKER = web.AppKey("sagemaker", SageMakerClients)
PRELOADER = web.AppKey("preloader", Preloader)
