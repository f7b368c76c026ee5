"""Span and event attribute names: the one vocabulary every infermesh service uses.

Names under `gen_ai.*` and `rpc.*` are OpenTelemetry semantic conventions (GenAI and RPC, as of
semconv 1.3x); we spell them here instead of importing `opentelemetry.semconv._incubating`, whose
GenAI module is marked deprecated (moved to a separate repository) and would warn on import.
Where the conventions have no name for one of our concepts, the name lives under `infermesh.*`.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions -------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
# The conventions have no request id; the id of the completion is gen_ai.response.id.
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"  # seconds
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"

# Values of gen_ai.operation.name.
OPERATION_TEXT_COMPLETION: Final = "text_completion"
OPERATION_CHAT: Final = "chat"
# Value of gen_ai.provider.name for spans of our own engine.
PROVIDER_INFERMESH: Final = "infermesh"

# --- RPC semantic conventions (set by the gRPC interceptors) --------------------------------
RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"

# --- infermesh: request life (frontend and scheduler) -----------------------------------------
REQUEST_ID: Final = "infermesh.request.id"
# The id the client gave (echoed in its answers); REQUEST_ID is the frontend-made unique one.
CLIENT_REQUEST_ID: Final = "infermesh.request.client_request_id"
REQUEST_PRIORITY: Final = "infermesh.request.priority"
REQUEST_PRIORITY_CLASS: Final = "infermesh.request.priority_class"
REQUEST_CLIENT_ID: Final = "infermesh.request.client_id"
QUEUE_TIME_MS: Final = "infermesh.queue_time_ms"
TTFT_MS: Final = "infermesh.ttft_ms"
E2E_LATENCY_MS: Final = "infermesh.e2e_latency_ms"
NUM_PREEMPTIONS: Final = "infermesh.request.num_preemptions"
PREFIX_CACHE_HIT_TOKENS: Final = "infermesh.request.prefix_cache_hit_tokens"
# The scheduler's token counts; gen_ai.usage.* is on the frontend's request span only.
PROMPT_TOKENS: Final = "infermesh.request.prompt_tokens"
OUTPUT_TOKENS: Final = "infermesh.request.output_tokens"
SCHEDULER_ADDRESS: Final = "infermesh.scheduler.address"
ROUTING_POLICY: Final = "infermesh.routing.policy"
ERROR_MESSAGE: Final = "infermesh.error.message"

# --- infermesh: engine steps (scheduler) and their execution (worker) -------------------------
STEP_ID: Final = "infermesh.step.id"
STEP_BATCH_SIZE: Final = "infermesh.step.batch_size"
STEP_PREFILL_TOKENS: Final = "infermesh.step.prefill_tokens"
STEP_DECODE_TOKENS: Final = "infermesh.step.decode_tokens"
STEP_NEW_SEQUENCES: Final = "infermesh.step.new_sequences"
STEP_FINISHED_SEQUENCES: Final = "infermesh.step.finished_sequences"
STEP_SWAP_OUT_BLOCKS: Final = "infermesh.step.swap_out_blocks"
STEP_SWAP_IN_BLOCKS: Final = "infermesh.step.swap_in_blocks"
STEP_COMPUTE_TIME_US: Final = "infermesh.step.compute_time_us"
WORKER_TP_RANK: Final = "infermesh.worker.tp_rank"
WORKER_PP_RANK: Final = "infermesh.worker.pp_rank"
WORKER_ID: Final = "infermesh.worker.id"

# --- infermesh: span event names on a request span --------------------------------------------
EVENT_ROUTE: Final = "route"  # frontend: the scheduler replica a request was sent to
EVENT_QUEUED: Final = "queued"
EVENT_SCHEDULED: Final = "scheduled"
EVENT_FIRST_TOKEN: Final = "first_token"
EVENT_PREEMPTED: Final = "preempted"
EVENT_RESUMED: Final = "resumed"
EVENT_FINISHED: Final = "finished"
EVENT_ABORTED: Final = "aborted"
EVENT_REJECTED: Final = "rejected"

# --- span names ---------------------------------------------------------------------------------
SPAN_FRONTEND_REQUEST: Final = "infermesh.frontend.generate"
SPAN_TOKENIZE: Final = "infermesh.frontend.tokenize"
SPAN_STREAM: Final = "infermesh.frontend.stream"
SPAN_DETOKENIZE: Final = "infermesh.frontend.detokenize"
SPAN_SCHEDULER_REQUEST: Final = "infermesh.scheduler.request"
SPAN_ENGINE_STEP: Final = "infermesh.scheduler.step"
SPAN_WORKER_FORWARD: Final = "infermesh.worker.forward"
