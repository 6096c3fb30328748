"""What the simulated apps are made of: their functions, their agent's models, their
deployments. Plain data; the traffic model (traffic.py) draws from it.

The app is the kind an AI app builder generates: a chat product with threads and
messages, text and vector search, file uploads, a webhook endpoint, and an agent
(the Convex Agent component) answering end users through several LLMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FunctionSpec:
    path: str
    type: str
    """query | mutation | action | http_action"""
    weight: float
    """relative share of the function executions"""
    component: str | None = None
    """the component the function lives in (`function.component_path`), if any"""
    search: str | None = None
    """"text" or "vector": a query that searches, or a mutation that writes search indexes"""
    agent: bool = False
    """an action that runs agent steps (LLM calls reported to /v1/agent/usage)"""
    files: bool = False
    """an action that reads and writes file storage"""
    node: bool = False
    """runs in Node.js (512 MB) rather than Convex's V8 runtime (64 MB)"""


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("messages:list", "query", 24),
    FunctionSpec("users:current", "query", 14),
    FunctionSpec("threads:listByUser", "query", 10),
    FunctionSpec("threads:getThread", "query", 5, component="agent"),
    FunctionSpec("search:messages", "query", 3.5, search="text"),
    FunctionSpec("documents:semanticSearch", "query", 2.5, search="vector"),
    FunctionSpec("messages:send", "mutation", 9),
    FunctionSpec("threads:create", "mutation", 2.5),
    FunctionSpec("users:updateProfile", "mutation", 2),
    FunctionSpec("messages:addMessages", "mutation", 5, component="agent", search="text"),
    FunctionSpec("documents:ingest", "mutation", 1.5, search="vector"),
    FunctionSpec("ai:generateReply", "action", 4, agent=True),
    FunctionSpec("files:process", "action", 1.5, files=True, node=True),
    FunctionSpec("integrations:syncCrm", "action", 1, node=True),
    FunctionSpec("POST /api/webhooks/stripe", "http_action", 2.5),
    FunctionSpec("GET /api/export", "http_action", 1),
)
DOWNLOAD_WEIGHT = 3.0
"""relative share of file downloads (`storage_api_bandwidth`) beside the functions"""

RUN_REASONS: dict[str, tuple[str, ...]] = {
    "query": ("initialSubscription", "dataChange", "dataChange", "dataChange", "identityChange"),
    "mutation": ("webSocket", "webSocket", "action", "scheduler"),
    "action": ("webSocket", "scheduler", "action", "cron"),
    "http_action": ("httpEndpoint",),
}

OCC_TABLES = ("threads", "messages", "users")


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    model: str
    weight: float
    cache_read: bool = True
    cache_write: bool = False
    reasoning: bool = False
    embedding: bool = False

    @property
    def key(self) -> str:
        """How the pipeline names a model in its token totals: provider/model."""
        return f"{self.provider}/{self.model}"


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("openai.chat", "gpt-4o-mini", 35),
    ModelSpec("openai.responses", "gpt-5-mini", 15, reasoning=True),
    ModelSpec("anthropic.messages", "claude-sonnet-4-5", 20, cache_write=True),
    ModelSpec("google.generative-ai", "gemini-2.5-flash", 15, reasoning=True),
    ModelSpec("openai.embedding", "text-embedding-3-small", 15, cache_read=False,
              embedding=True),
)
AGENT_NAMES = ("Support Agent", "Research Agent")

DEPLOYMENT_TYPES = ("prod", "prod", "prod", "prod", "dev", "preview")
REGIONS = ("aws-us-east-1", "aws-us-east-1", "aws-us-east-1", "aws-eu-west-1")


@dataclass(frozen=True)
class Deployment:
    """One simulated Convex deployment (one generated app)."""

    name: str
    index: int
    convex: dict[str, Any]
    """the `convex` object of its events"""
    jsonl: bool
    """its log stream's format: JSONL (the dashboard's default) or a JSON array"""
    users: tuple[str, ...]
    """its end users (the agent's `userId`s)"""
    webhook_secret: str
    ingest_token: str
    database_bytes: int
    """size of its documents when the run starts; storage snapshots grow from there"""
    file_bytes: int
    search_bytes: int


def convex_object(name: str, index: int, deployment_type: str, region: str) -> dict[str, Any]:
    """The `convex` object Convex's webhook sink appends to every event (all keys present)."""
    return {
        "deployment_name": name,
        "deployment_type": deployment_type,
        "deployment_ref": None,
        "project_name": f"Generated App {index}",
        "project_slug": f"generated-app-{index}",
        "deployment_region": region,
    }
