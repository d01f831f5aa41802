"""Settings of the ``openai`` backend: any OpenAI-compatible server (llama-server, vLLM, a cloud API)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, PositiveFloat

from lmgate.backends.tasks import TasksConfig

#: What every OpenAI-compatible server takes.
OPENAI_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
                 "logit_bias", "logprobs", "n")  # fmt: skip


class OpenAIConfig(TasksConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["openai"] = "openai"
    base_url: str = Field(description="The server's API root, e.g. http://10.0.0.5:8080/v1.", min_length=8)
    remote_model: str | None = Field(default=None, description="The model's name there (default: this name).")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the upstream's API key.")
    timeout_s: PositiveFloat = Field(default=600.0, description="Per request.")
    context_length: int = Field(default=0, ge=0, description="Shown in /v1/models when the upstream does not say.")
    supported_params: list[str] = Field(
        default_factory=lambda: list(OPENAI_PARAMS),
        description="Sampling parameters the upstream honours; vLLM / llama-server / lmgate also take top_k, "
        "min_p, repetition_penalty, ignore_eos, stop_token_ids, and vLLM / lmgate structured_output (sent in the "
        "request body as extensions: `structured_outputs`).",
    )
    tools: bool = Field(
        default=True,
        description="The upstream calls functions (OpenAI; vLLM with --enable-auto-tool-choice; llama-server "
        "--jinja): `tools`, `tool_choice` and the calls in the history are forwarded, its calls passed back.",
    )
    send_cache_salt: bool = Field(
        default=False,
        description="Send each tenant's prefix-cache salt as `cache_salt` in the request body (vLLM's OpenAI "
        "server takes it, so tenants cannot probe each other's cached prompts there); off for servers that "
        "refuse unknown fields.",
    )
