"""Which adapter serves a (client API, backend provider) pair; a pair not listed is not served.

Adding a provider: its adapter module, and its lines in `ADAPTERS`. A provider whose API depends on
the backend's model (Vertex: Claude or Gemini) is keyed `provider/publisher` (`_publisher_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from tollway_sidecar.providers.adapters.anthropic import AnthropicChat, AnthropicMessages
from tollway_sidecar.providers.adapters.base import Adapter, UpstreamRequest
from tollway_sidecar.providers.adapters.chat_bedrock import ChatBedrock
from tollway_sidecar.providers.adapters.chat_vertex import ChatVertex, ChatVertexClaude
from tollway_sidecar.providers.adapters.messages_bedrock import MessagesBedrock
from tollway_sidecar.providers.adapters.messages_gemini import MessagesGemini
from tollway_sidecar.providers.adapters.messages_vertex import MessagesVertex
from tollway_sidecar.providers.adapters.openai import AzureOpenAI, OpenAICompatible
from tollway_sidecar.providers.adapters.responses_chat import ResponsesOverChat
from tollway_sidecar.providers.adapters.responses_openai import AzureResponses, OpenAIResponses
from tollway_sidecar.providers.vertex import publisher

__all__ = ["ADAPTERS", "CREDENTIAL_HEADERS", "adapter_for", "removals"]

_OPENAI: Final = OpenAICompatible()
_AZURE: Final = AzureOpenAI()
_ANTHROPIC_CHAT: Final = AnthropicChat()
_BEDROCK_CHAT: Final = ChatBedrock()
_VERTEX_CHAT: Final = ChatVertex()
_VERTEX_CLAUDE_CHAT: Final = ChatVertexClaude()

# (operation, provider) → adapter. Operations: `chat`, `embeddings`, `messages`, `responses`
# (`extproc.state`).
ADAPTERS: Final[Mapping[tuple[str, str], Adapter]] = {
    ("chat", "openai"): _OPENAI,
    ("embeddings", "openai"): _OPENAI,
    ("chat", "openai-compatible"): _OPENAI,
    ("embeddings", "openai-compatible"): _OPENAI,
    ("chat", "gemini"): _OPENAI,
    ("embeddings", "gemini"): _OPENAI,
    ("chat", "azure-openai"): _AZURE,
    ("embeddings", "azure-openai"): _AZURE,
    ("chat", "anthropic"): _ANTHROPIC_CHAT,
    ("messages", "anthropic"): AnthropicMessages(),
    ("chat", "bedrock"): _BEDROCK_CHAT,
    ("messages", "bedrock"): MessagesBedrock(),
    ("chat", "vertex"): _VERTEX_CHAT,  # Gemini
    ("messages", "vertex"): MessagesGemini(),
    ("chat", "vertex/anthropic"): _VERTEX_CLAUDE_CHAT,
    ("messages", "vertex/anthropic"): MessagesVertex(),
    ("responses", "openai"): OpenAIResponses(),
    ("responses", "azure-openai"): AzureResponses(),
    # Backends that speak only chat completions (or Anthropic, Converse): translated through them.
    ("responses", "openai-compatible"): ResponsesOverChat(_OPENAI),
    ("responses", "gemini"): ResponsesOverChat(_OPENAI),
    ("responses", "anthropic"): ResponsesOverChat(_ANTHROPIC_CHAT),
    ("responses", "bedrock"): ResponsesOverChat(_BEDROCK_CHAT),
    ("responses", "vertex"): ResponsesOverChat(_VERTEX_CHAT),
    ("responses", "vertex/anthropic"): ResponsesOverChat(_VERTEX_CLAUDE_CHAT),
}

# Every header any adapter sets: each attempt sets or removes each of them, because Envoy keeps an
# earlier attempt's header mutations on a retry.
CREDENTIAL_HEADERS: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(name for adapter in ADAPTERS.values() for name in adapter.credential_headers)
)


def _publisher_key(provider: str, model: str) -> str:
    if provider == "vertex" and publisher(model) == "anthropic":
        return "vertex/anthropic"
    return provider


def adapter_for(operation: str, provider: str, model: str = "") -> Adapter | None:
    """The adapter for a backend of `provider` serving `model` to `operation` clients."""
    return ADAPTERS.get((operation, _publisher_key(provider, model)))


def removals(upstream: UpstreamRequest) -> tuple[str, ...]:
    """The headers one attempt removes: every adapter's it does not set, and its own removals."""
    names = [name for name in CREDENTIAL_HEADERS if name not in upstream.set_headers]
    return tuple(dict.fromkeys((*names, *upstream.remove)))
