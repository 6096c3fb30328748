"""The traffic model: which deployment sends what, when, late or twice.

Every choice comes from one `random.Random(seed)`, in the order bodies are
built, so a seed fixes the deployments, their users and the sequence of events
with all their counters, the late events and the bodies delivered twice. Event
times come from the clock passed to `next_batch` (the sender passes the wall
clock; with the same clock readings the bodies are byte for byte the same).

How a deployment's traffic looks:

- Deployments are busy in a Zipf distribution (the first is the busiest), as in
  a platform where a few generated apps are popular and most are quiet. Each
  body comes from one deployment, like a Convex log stream's POST: up to 128
  events that completed over the last 5 s (Convex flushes every 5 s), in order.
- Function executions follow the catalogue's mix (catalogue.py): queries (many
  cached: no database work), mutations (some conflict: an OCC-failed attempt
  with `will_retry`, then its retry), V8 and Node actions, HTTP actions; plus
  file downloads. Counters are drawn from skewed (log-normal) distributions.
- Agent actions run one to four LLM steps for one of the deployment's end users
  (Zipf again) over several providers and models, sometimes after an embedding
  call; each step is one usage record, POSTed to /v1/agent/usage with the
  deployment's ingest token in a body of its own beside the log-stream body.
  Records come in the AI SDK's usage shape or the Agent component's vUsage shape.
- A storage snapshot (`current_storage_usage`) opens a deployment's first body
  and then comes every storage interval, jittered to 0.5-1.5x as Convex does
  (30-90 min at the default hour); storage grows with what mutations and file
  actions wrote. A `log_stream_egress` event, the bytes of log-stream bodies sent
  since the previous one, comes every egress interval (60 s, as Convex); the
  first one carries the minute before the run.
- Late events: a fraction of events (and agent records) carry a time in the
  past within the late-event grace (between a minute and half the grace ago):
  they count. Another fraction is older than the grace (1.5 to 3 graces ago):
  the worker dead-letters them and the expected totals count them only as such.
- Duplicates: a fraction of bodies is marked to be delivered a second time, the
  same bytes, after the first delivery was acknowledged (as Convex does when it
  did not see an answer); the worker drops the repeat, so it counts once.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from meterstream.loadgen import events as ev
from meterstream.loadgen.catalogue import (
    AGENT_NAMES,
    DEPLOYMENT_TYPES,
    DOWNLOAD_WEIGHT,
    FUNCTIONS,
    MODELS,
    OCC_TABLES,
    REGIONS,
    RUN_REASONS,
    Deployment,
    FunctionSpec,
    ModelSpec,
    convex_object,
)
from meterstream.loadgen.expected import DeploymentTotals

MAX_BATCH = 128
"""Convex's webhook sink sends at most 128 events per POST."""
FLUSH_MS = 5_000
"""Convex's log manager flushes every 5 s: a body's events completed within that."""
MIN_GRACE_MS = 60_000
LOGS = "logs"
AGENT = "agent"


@dataclass(frozen=True)
class TrafficOptions:
    deployments: int = 10
    users: int = 20
    """end users of each deployment's agent"""
    seed: int = 0
    prefix: str = "loadgen"
    """deployments are named <prefix>-0001, <prefix>-0002, ..."""
    batch_size: int = MAX_BATCH
    duplicates: float = 0.0
    """fraction of bodies delivered twice"""
    late: float = 0.0
    """fraction of events late but within the grace (counted)"""
    too_late: float = 0.0
    """fraction of events older than the grace (dead-lettered, not counted)"""
    grace_ms: int = 86_400_000
    """the worker's METERSTREAM_LATE_GRACE"""
    storage_interval_ms: int = 3_600_000
    egress_interval_ms: int = 60_000

    def __post_init__(self) -> None:
        problems = []
        if self.deployments < 1:
            problems.append("deployments must be at least 1")
        if self.users < 1:
            problems.append("users must be at least 1")
        if not 1 <= self.batch_size <= MAX_BATCH:
            problems.append(f"batch size must be 1 to {MAX_BATCH}")
        for name in ("duplicates", "late", "too_late"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be a fraction from 0 to 1")
        if self.late + self.too_late > 1.0:
            problems.append("late + too_late must not exceed 1")
        if self.grace_ms < MIN_GRACE_MS:
            # Delivery alone (the 5 s flush, retries) would push on-time events past it.
            problems.append("the late-event grace (METERSTREAM_LATE_GRACE) must be at least "
                            f"{MIN_GRACE_MS // 1000} s for the totals to be exact")
        if self.storage_interval_ms < 1000 or self.egress_interval_ms < 1000:
            problems.append("the storage and egress intervals must be at least 1 s")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Delivery:
    """One POST body and what it adds to the expected totals once acknowledged."""

    deployment: Deployment
    endpoint: str
    """LOGS (/v1/convex/logs) or AGENT (/v1/agent/usage)"""
    body: bytes
    events: int
    """log-stream events or agent usage records in the body"""
    totals: DeploymentTotals
    duplicate: bool
    """to be delivered a second time, byte for byte, after it is acknowledged"""
    late: int = 0
    """events in the body that are late but within the grace (counted)"""


@dataclass
class _DeploymentState:
    next_snapshot_ms: int | None = None
    last_egress_ms: int | None = None
    egress_bytes: int = 0
    """log-stream bytes sent since the last log_stream_egress event"""
    documents: int = 0
    indexes: int = 0
    files: int = 0
    backups: int = 0
    text: int = 0
    vectors: int = 0
    threads: dict[str, str] = field(default_factory=dict)
    """end user -> their current agent thread"""


@dataclass
class _Step:
    """An agent step waiting for its action's time."""

    action_index: int
    steps_after: int
    record: dict[str, Any]
    user: str
    model_key: str
    tokens: dict[str, int]


def _zipf(n: int, exponent: float = 1.0) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank ** exponent) for rank in range(1, n + 1)))


class TrafficModel:
    def __init__(self, options: TrafficOptions,
                 secret: Callable[[], str] = lambda: secrets.token_hex(16)) -> None:
        """`secret` makes webhook secrets and ingest tokens (not part of any body)."""
        self.options = options
        self.rng = random.Random(options.seed)
        self.deployments = [self._deployment(i, secret) for i in range(1, options.deployments + 1)]
        self._states = [self._initial_state(d) for d in self.deployments]
        self._deployment_weights = _zipf(len(self.deployments))
        self._user_weights = _zipf(options.users)
        kinds: list[FunctionSpec | None] = [*FUNCTIONS, None]  # None: a file download
        self._kinds = kinds
        self._kind_weights = list(itertools.accumulate(
            [spec.weight for spec in FUNCTIONS] + [DOWNLOAD_WEIGHT]))
        chat = [m for m in MODELS if not m.embedding]
        self._chat_models = chat
        self._chat_weights = list(itertools.accumulate(m.weight for m in chat))
        self._embedding_models = [m for m in MODELS if m.embedding]

    # Deployments.

    def _convex_id(self) -> str:
        """32 base32 characters, like Convex's document and storage ids."""
        return base64.b32encode(self.rng.getrandbits(160).to_bytes(20)).decode().lower()

    def _int(self, low: int, high: int) -> int:
        """random.randint's distribution at a fraction of its cost (the hottest call here)."""
        return low + int(self.rng.random() * (high - low + 1))

    def _deployment(self, index: int, secret: Callable[[], str]) -> Deployment:
        rng = self.rng
        name = f"{self.options.prefix}-{index:04d}"
        convex = convex_object(name, index, rng.choice(DEPLOYMENT_TYPES), rng.choice(REGIONS))
        users = tuple(f"user_{index}_{rng.getrandbits(40):010x}"
                      for _ in range(self.options.users))
        return Deployment(
            name=name, index=index, convex=convex, jsonl=rng.random() < 0.6, users=users,
            webhook_secret=secret(), ingest_token=secret(),
            database_bytes=int(rng.lognormvariate(17.5, 1.5)),  # median ~40 MB
            file_bytes=int(rng.lognormvariate(18.0, 2.0)),
            search_bytes=int(rng.lognormvariate(15.0, 1.5)))

    def _initial_state(self, deployment: Deployment) -> _DeploymentState:
        database = deployment.database_bytes
        return _DeploymentState(
            documents=database * 4 // 5, indexes=database // 5,
            files=deployment.file_bytes, backups=deployment.file_bytes // 3,
            text=deployment.search_bytes // 3, vectors=deployment.search_bytes * 2 // 3)

    # Bodies.

    def next_batch(self, now_ms: int, size: int | None = None) -> list[Delivery]:
        """The next body of log-stream events (`size` of them, at most the batch size),
        from one deployment, at `now_ms`; and its agent usage records, if any, as a
        second body."""
        size = self.options.batch_size if size is None else min(size, self.options.batch_size)
        if size < 1:
            raise ValueError("a body holds at least one event")
        rng = self.rng
        deployment = self.deployments[bisect.bisect_left(
            self._deployment_weights, rng.random() * self._deployment_weights[-1])]
        state = self._states[deployment.index - 1]
        log_events: list[dict[str, Any]] = []
        steps: list[_Step] = []

        if state.next_snapshot_ms is None or now_ms >= state.next_snapshot_ms:
            log_events.append(self._snapshot(deployment, state))
            interval = self.options.storage_interval_ms
            state.next_snapshot_ms = now_ms + int(interval * (0.5 + rng.random()))
        if len(log_events) < size and (state.last_egress_ms is None or now_ms
                                       - state.last_egress_ms >= self.options.egress_interval_ms):
            egress = state.egress_bytes if state.last_egress_ms is not None else \
                self._int(20_000, 2_000_000)  # the minute before the run
            if egress > 0:  # Convex sends the event only when there was egress
                log_events.append(ev.log_stream_egress(timestamp=0, egress_bytes=egress,
                                                       convex=deployment.convex))
            state.last_egress_ms, state.egress_bytes = now_ms, 0
        while len(log_events) < size:
            kind = self._kinds[bisect.bisect_left(self._kind_weights,
                                                  rng.random() * self._kind_weights[-1])]
            if kind is None:
                log_events.append(ev.storage_api_bandwidth(
                    timestamp=0, storage_id=self._convex_id(),
                    egress_bytes=int(rng.lognormvariate(12.5, 1.6)) + 1,  # median ~270 KB
                    convex=deployment.convex))
            else:
                log_events.extend(self._function(kind, deployment, state, size - len(log_events),
                                                 len(log_events), steps))

        log_totals = DeploymentTotals()
        # Spread over the last flush interval, in order (the last one now), unless late.
        on_times = [now_ms - FLUSH_MS + (FLUSH_MS * (i + 1)) // len(log_events)
                    for i in range(len(log_events))]
        late = 0
        for event, on_time in zip(log_events, on_times, strict=True):
            event["timestamp"], dead = self._maybe_late(on_time)
            late += not dead and event["timestamp"] != on_time
            if dead:
                log_totals.add_dead_letter(event["topic"])
            else:
                log_totals.add_event(event)
        body = ev.log_stream_body(log_events, deployment.jsonl)
        state.egress_bytes += len(body)
        deliveries = [Delivery(deployment, LOGS, body, len(log_events), log_totals,
                               rng.random() < self.options.duplicates, late)]
        if steps:
            deliveries.append(self._agent_delivery(deployment, steps, on_times))
        return deliveries

    def _maybe_late(self, timestamp: int) -> tuple[int, bool]:
        """The event's time, moved into the past for a late event, and whether it is
        older than the grace (dead-lettered). The worker judges against the receipt,
        which follows `timestamp` by the delivery's time (seconds, minutes with
        retries): late events are placed well inside the grace (a minute to half the
        grace ago) or well outside it (1.5 to 3 graces ago), so that cannot change
        which side they fall."""
        options = self.options
        if not options.late and not options.too_late:
            return timestamp, False
        draw = self.rng.random()
        grace = options.grace_ms
        if draw < options.too_late:
            return timestamp - int(grace * (1.5 + 1.5 * self.rng.random())), True
        if draw < options.too_late + options.late:
            earliest = min(60_000, grace // 4)
            return timestamp - earliest - int((grace // 2 - earliest) * self.rng.random()), False
        return timestamp, False

    # Function executions.

    def _function(self, spec: FunctionSpec, deployment: Deployment, state: _DeploymentState,
                  room: int, index: int, steps: list[_Step]) -> list[dict[str, Any]]:
        if spec.type == "query":
            return [self._query(spec, deployment)]
        if spec.type == "mutation":
            return self._mutation(spec, deployment, state, room)
        if spec.type == "action":
            return [self._action(spec, deployment, state, index, steps)]
        return [self._http_action(spec, deployment)]

    def _request_id(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def _query(self, spec: FunctionSpec, deployment: Deployment) -> dict[str, Any]:
        rng = self.rng
        args = self._int(2, 300)
        if spec.search is None and rng.random() < 0.45:  # served from the query cache
            return ev.function_execution(
                timestamp=0, path=spec.path, function_type="query", cached=True,
                request_id=self._request_id(), mutation_queue_length=None,
                mutation_retry_count=None, component_path=spec.component,
                execution_time_ms=self._int(0, 2), user_execution_time_ms=0,
                status="success", error_message=None, occ_info=None, will_retry=False,
                scheduler_job_id=None, run_reason=rng.choice(RUN_REASONS["query"]),
                usage=ev.usage(function_args_bytes=args,
                               function_returns_bytes=self._int(40, 20_000)),
                convex=deployment.convex)
        documents = int(rng.lognormvariate(1.6, 1.0)) + 1
        read_bytes = documents * self._int(180, 2400)
        execution = max(1, int(rng.lognormvariate(2.8, 0.9)))
        failed = rng.random() < 0.003
        text = self._int(2_000, 400_000) if spec.search == "text" else 0
        vector = 6144 * self._int(10, 256) if spec.search == "vector" else 0
        return ev.function_execution(
            timestamp=0, path=spec.path, function_type="query", cached=False,
            request_id=self._request_id(), mutation_queue_length=None,
            mutation_retry_count=None, component_path=spec.component,
            execution_time_ms=execution,
            user_execution_time_ms=execution * self._int(20, 80) // 100,
            status="failure" if failed else "success",
            error_message="Uncaught Error: Not authorized" if failed else None,
            occ_info=None, will_retry=False, scheduler_job_id=None,
            run_reason=rng.choice(RUN_REASONS["query"]),
            usage=ev.usage(database_read_bytes=read_bytes,
                           database_io_read_bytes=read_bytes + documents * self._int(16, 96),
                           database_read_documents=documents, text_search_query_bytes=text,
                           vector_search_query_bytes=vector, function_args_bytes=args,
                           function_returns_bytes=None if failed else read_bytes * 4 // 5),
            convex=deployment.convex)

    def _mutation(self, spec: FunctionSpec, deployment: Deployment, state: _DeploymentState,
                  room: int) -> list[dict[str, Any]]:
        rng = self.rng
        conflicts = 0
        if room >= 2 and rng.random() < 0.04:  # an OCC conflict, retried by Convex
            conflicts = 1 if room < 3 or rng.random() < 0.8 else 2
        request_id = self._request_id()
        queue = rng.choice((0, 0, 0, 0, 1, 1, 2, 3, 5))
        run_reason = rng.choice(RUN_REASONS["mutation"])
        table = rng.choice(OCC_TABLES)
        document_id = self._convex_id()
        args = self._int(20, 4000)
        attempts = []
        for attempt in range(conflicts + 1):
            read_docs = self._int(1, 10)
            written_docs = self._int(1, 5)
            read_bytes = read_docs * self._int(150, 2000)
            write_bytes = written_docs * self._int(100, 3000)
            failed = attempt < conflicts
            if not failed:
                state.documents += write_bytes
                state.indexes += write_bytes // 5
            text_write = write_bytes * self._int(50, 150) // 100 if spec.search == "text" else 0
            vector_write = 6144 * written_docs if spec.search == "vector" else 0
            if not failed:
                state.text += text_write
                state.vectors += vector_write
            execution = max(1, int(rng.lognormvariate(3.0, 0.8)))
            attempts.append(ev.function_execution(
                timestamp=0, path=spec.path, function_type="mutation", cached=None,
                request_id=request_id, mutation_queue_length=queue,
                mutation_retry_count=attempt, component_path=spec.component,
                execution_time_ms=execution,
                user_execution_time_ms=execution * self._int(15, 70) // 100,
                status="failure" if failed else "success",
                error_message=ev.occ_error(table) if failed else None,
                occ_info=ev.occ_info(table, document_id, spec.path, spec.component, attempt)
                if failed else None,
                will_retry=failed, scheduler_job_id=self._convex_id()
                if run_reason == "scheduler" else None,
                run_reason=run_reason,
                usage=ev.usage(
                    database_read_bytes=read_bytes, database_write_bytes=write_bytes,
                    database_io_read_bytes=read_bytes + read_docs * self._int(16, 96),
                    database_io_write_bytes=write_bytes + written_docs * self._int(32, 256),
                    database_read_documents=read_docs, database_write_documents=written_docs,
                    text_search_write_query_bytes=text_write,
                    vector_search_write_query_bytes=vector_write, function_args_bytes=args,
                    function_returns_bytes=None if failed else self._int(2, 200)),
                convex=deployment.convex))
        return attempts

    def _action(self, spec: FunctionSpec, deployment: Deployment, state: _DeploymentState,
                index: int, steps: list[_Step]) -> dict[str, Any]:
        rng = self.rng
        memory = 512 if spec.node else 64
        execution = min(600_000, max(5, int(rng.lognormvariate(6.8, 1.0))))  # median ~0.9 s
        failed = rng.random() < 0.02
        scheduled = rng.random() < 0.3
        file_read = int(rng.lognormvariate(12.0, 1.5)) if spec.files else 0
        file_write = int(rng.lognormvariate(11.5, 1.5)) if spec.files else 0
        state.files += file_write
        egress = self._int(500, 60_000)
        if spec.agent:
            egress += self._agent_steps(deployment, state, index, steps)
        return ev.function_execution(
            timestamp=0, path=spec.path, function_type="action", cached=None,
            request_id=self._request_id(), mutation_queue_length=None,
            mutation_retry_count=None, component_path=spec.component,
            execution_time_ms=execution,
            user_execution_time_ms=None if spec.node else execution * self._int(2, 30) // 100,
            status="failure" if failed else "success",
            error_message="Uncaught Error: fetch failed" if failed else None,
            occ_info=None, will_retry=False,
            scheduler_job_id=self._convex_id() if scheduled else None,
            run_reason="scheduler" if scheduled else rng.choice(RUN_REASONS["action"]),
            usage=ev.usage(file_storage_read_bytes=file_read,
                           file_storage_write_bytes=file_write, network_egress_bytes=egress,
                           memory_used_mb=memory, action_memory_used_mb=memory,
                           function_args_bytes=self._int(20, 3000),
                           function_returns_bytes=None if failed else self._int(2, 5000)),
            convex=deployment.convex)

    def _http_action(self, spec: FunctionSpec, deployment: Deployment) -> dict[str, Any]:
        rng = self.rng
        execution = max(2, int(rng.lognormvariate(4.0, 1.0)))
        failed = rng.random() < 0.01
        return ev.function_execution(
            timestamp=0, path=spec.path, function_type="http_action", cached=None,
            request_id=self._request_id(), mutation_queue_length=None,
            mutation_retry_count=None, component_path=spec.component,
            execution_time_ms=execution,
            user_execution_time_ms=execution * self._int(5, 60) // 100,
            status="failure" if failed else "success",
            error_message="Uncaught Error: invalid signature" if failed else None,
            occ_info=None, will_retry=False, scheduler_job_id=None,
            run_reason=RUN_REASONS["http_action"][0],
            usage=ev.usage(network_egress_bytes=self._int(0, 8_000), memory_used_mb=64,
                           action_memory_used_mb=64),
            convex=deployment.convex)

    # Agent steps.

    def _agent_steps(self, deployment: Deployment, state: _DeploymentState, index: int,
                     steps: list[_Step]) -> int:
        """Queues the usage records of one agent action; returns the bytes it sent to LLMs."""
        rng = self.rng
        user = deployment.users[bisect.bisect_left(
            self._user_weights, rng.random() * self._user_weights[-1])]
        if user not in state.threads or rng.random() < 0.2:
            state.threads[user] = self._convex_id()
        thread = state.threads[user]
        agent_name = rng.choice(AGENT_NAMES)
        chat = self._chat_models[bisect.bisect_left(
            self._chat_weights, rng.random() * self._chat_weights[-1])]
        models = [chat] * self._int(1, 4)
        if rng.random() < 0.25:
            models.insert(0, rng.choice(self._embedding_models))
        sent = 0
        for number, model in enumerate(models):
            tokens, usage, metadata = self._tokens(model, number)
            sent += tokens["input_tokens"] * 4
            record = ev.agent_usage(
                record_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), timestamp=0,
                deployment=deployment.name, user_id=user, thread_id=thread,
                agent_name=agent_name, model=model.model, provider=model.provider,
                usage=usage, provider_metadata=metadata)
            steps.append(_Step(index, len(models) - number - 1, record, user, model.key, tokens))
        return sent

    def _tokens(self, model: ModelSpec, number: int
                ) -> tuple[dict[str, int], dict[str, Any], dict[str, Any] | None]:
        """A step's tokens by kind (as the pipeline names them), its usage object as
        sent and its provider metadata."""
        rng = self.rng
        if model.embedding:
            count = int(rng.lognormvariate(5.7, 0.8)) + 1
            tokens = {"input_tokens": count, "non_cached_input_tokens": count,
                      "cached_input_tokens": 0, "cache_write_input_tokens": 0,
                      "output_tokens": 0, "text_output_tokens": 0, "reasoning_tokens": 0,
                      "total_tokens": count}
            return tokens, ev.embedding_usage(count), None
        prompt = int(rng.lognormvariate(7.8, 0.9)) + 50  # median ~2,500
        cache_read = (prompt * self._int(0, 80) // 100
                      if model.cache_read and (number > 0 or rng.random() < 0.5) else 0)
        cache_write = (prompt - cache_read) * self._int(0, 50) // 100 \
            if model.cache_write else None
        non_cached = prompt - cache_read - (cache_write or 0)
        output = int(rng.lognormvariate(5.5, 0.9)) + 1  # median ~250
        reasoning = output * self._int(20, 70) // 100 if model.reasoning else 0
        shape = ev.ai_sdk_usage if rng.random() < 0.75 else ev.v_usage
        usage = shape(non_cached=non_cached, cache_read=cache_read, cache_write=cache_write,
                      output=output, reasoning=reasoning)
        tokens = {"input_tokens": prompt, "non_cached_input_tokens": non_cached,
                  "cached_input_tokens": cache_read, "cache_write_input_tokens": cache_write or 0,
                  "output_tokens": output, "text_output_tokens": output - reasoning,
                  "reasoning_tokens": reasoning, "total_tokens": prompt + output}
        return tokens, usage, self._provider_metadata(model, cache_write, reasoning)

    def _provider_metadata(self, model: ModelSpec, cache_write: int | None,
                           reasoning: int) -> dict[str, Any]:
        if model.provider.startswith("anthropic"):
            return {"anthropic": {"cacheCreationInputTokens": cache_write or 0}}
        if model.provider.startswith("google"):
            return {"google": {"usageMetadata": {"thoughtsTokenCount": reasoning}}}
        if model.provider == "openai.responses":
            return {"openai": {"responseId": f"resp_{self.rng.getrandbits(96):024x}",
                               "serviceTier": "default"}}
        return {"openai": {"acceptedPredictionTokens": 0, "rejectedPredictionTokens": 0}}

    def _agent_delivery(self, deployment: Deployment, steps: list[_Step],
                        on_times: list[int]) -> Delivery:
        """The body of the agent records: each step a few hundred ms before the next,
        the last one as its action completes (late like any event, independently)."""
        totals = DeploymentTotals()
        records = []
        late = 0
        for step in steps:
            on_time = (on_times[step.action_index] - 400 * step.steps_after
                       - self._int(50, 350))
            step.record["timestamp"], dead = self._maybe_late(on_time)
            late += not dead and step.record["timestamp"] != on_time
            if dead:
                totals.add_dead_letter("agent_usage")
            else:
                totals.add_agent_step(step.user, step.model_key, step.record["timestamp"],
                                      step.tokens)
            records.append(step.record)
        return Delivery(deployment, AGENT, orjson.dumps(records), len(records), totals,
                        self.rng.random() < self.options.duplicates, late)

    def _snapshot(self, deployment: Deployment, state: _DeploymentState) -> dict[str, Any]:
        return ev.storage_usage(
            timestamp=0, document_bytes=state.documents, index_bytes=state.indexes,
            vector_bytes=state.vectors, text_bytes=state.text, file_bytes=state.files,
            backup_bytes=state.backups,
            scheduled_functions_bytes=self._int(10_000, 5_000_000),
            storage_table_bytes=self._int(1_000, 2_000_000), convex=deployment.convex)
