"""Function calling around an engine that writes text: the request prepared (a forced call decodes
under its grammar), the choices' text parsed into tool-call deltas.

In-process engines (llama.cpp, vLLM, transformers) wrap their generation in ``tool_calls``; remote
backends (an lmgate worker over gRPC, an OpenAI-compatible server) forward the tools and pass the
calls their upstream parsed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable, Mapping

from lmgate.backends.errors import InvalidRequest
from lmgate.backends.tools.formats import SYNTAX, ToolFormat
from lmgate.backends.tools.grammar import forced_calls, optional_calls
from lmgate.backends.tools.parser import ToolCallParser
from lmgate.backends.types import FinishReason, GenerateRequest, TokenDelta, ToolChoice


def prepared(
    request: GenerateRequest, fmt: ToolFormat | None, tokens: Mapping[str, int] | None = None
) -> GenerateRequest:
    """``request`` as the engine decodes it: under the grammar of its calls, forced or optional
    (``auto``: free text until a call starts), written with ``tokens``, the format's markers that are
    special tokens of the model (``ModelInfo.tool_tokens``).
    ``InvalidRequest`` naming ``tools`` when the model writes no known call format."""
    tools = request.tools
    if tools is None or tools.choice is ToolChoice.NONE:
        return request
    if fmt is None:
        raise InvalidRequest(
            f"the model {request.model!r} has no known tool-call format (its chat template shows no tools): set "
            "`tool_parser` in its config, or send the request without `tools`",
            param="tools",
        )
    if not tools.forced and request.sampling.use_beam_search:
        return request  # beams decode without grammars: auto stays parsed only, as before
    calls = forced_calls if tools.forced else optional_calls
    sampling = dataclasses.replace(request.sampling, structured_output=calls(tools, fmt, tokens))
    return dataclasses.replace(request, sampling=sampling)


def tool_calls(
    request: GenerateRequest,
    fmt: ToolFormat | None,
    generate: Callable[[GenerateRequest], AsyncGenerator[TokenDelta, None]],
    tokens: Mapping[str, int] | None = None,
) -> AsyncGenerator[TokenDelta, None]:
    """``generate(request)`` with each choice's calls parsed out of its text. A request without tools,
    or with ``tool_choice: none``, gets ``generate``'s own stream: no layer on every request's path.
    A choice that made calls and stopped on its own ends with ``FinishReason.TOOL_CALLS``."""
    tools = request.tools
    if tools is None or tools.choice is ToolChoice.NONE:
        return generate(request)
    return _parsed(request, fmt, generate, tokens)


async def _parsed(
    request: GenerateRequest,
    fmt: ToolFormat | None,
    generate: Callable[[GenerateRequest], AsyncGenerator[TokenDelta, None]],
    tokens: Mapping[str, int] | None,
) -> AsyncGenerator[TokenDelta, None]:
    decoded = prepared(request, fmt, tokens)
    tools = request.tools
    assert fmt is not None and tools is not None  # prepared() refused the request otherwise
    names = frozenset(t.name for t in tools.functions)
    parsers: dict[int, ToolCallParser] = {}
    async for delta in generate(decoded):
        parser = parsers.get(delta.index)
        if parser is None:
            parser = parsers[delta.index] = ToolCallParser(SYNTAX[fmt], names, parallel=tools.parallel)
        text, calls = parser.feed(delta.text)
        finish = delta.finish_reason
        if finish is not None:
            more_text, more_calls = parser.finish()
            text, calls = text + more_text, calls + more_calls
            if finish is FinishReason.STOP and parser.calls:
                finish = FinishReason.TOOL_CALLS
        yield dataclasses.replace(delta, text=text, tool_calls=tuple(calls), finish_reason=finish)
