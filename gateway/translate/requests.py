"""Request bodies: OpenAI chat completions to Anthropic messages and back.

Each function takes the caller's decoded body and returns the provider's, or
raises the 400 ``invalid_request`` answer naming the parameter that has no
equivalent. Nothing here does I/O; the tables of docs/translation.md describe
every rule.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import GatewayError, invalid_request

_decode = msgspec.json.decode
_encode = msgspec.json.encode

#: ``max_tokens`` sent to Anthropic when the OpenAI caller set none: the model's
#: largest output where the family is known (what OpenAI does without a limit),
#: else DEFAULT_MAX_TOKENS. First matching prefix wins.
MAX_OUTPUT_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-3-haiku", 4096),
    ("claude-3-opus", 4096),
    ("claude-3-5-", 8192),
    ("claude-3-7-sonnet", 64000),
    ("claude-opus-4-0", 32000),
    ("claude-opus-4-1", 32000),
    ("claude-opus-4-2", 32000),  # claude-opus-4-20250514
    ("claude-opus-4", 64000),
    ("claude-sonnet-4", 64000),
    ("claude-haiku-4", 64000),
)
DEFAULT_MAX_TOKENS = 4096

# OpenAI parameters dropped without a word: they steer storage, billing or
# caching, never the answer the caller parses.
_IGNORED_OPENAI = frozenset(
    {"store", "metadata", "service_tier", "seed", "prompt_cache_key", "prompt_cache_retention",
     "prompt_cache_options", "prediction", "verbosity", "moderation"}
)  # fmt: skip
# Parameters an Anthropic caller may send that the OpenAI request does not need.
_IGNORED_ANTHROPIC = frozenset({"service_tier", "inference_geo", "speed", "diagnostics", "cache_control"})


def default_max_tokens(model: str) -> int:
    for prefix, tokens in MAX_OUTPUT_TOKENS:
        if model.startswith(prefix):
            return tokens
    return DEFAULT_MAX_TOKENS


class Untranslatable(GatewayError):
    """400 ``invalid_request``: the request cannot be put in this provider's API (a
    parameter without equivalent, a malformed part). Another provider may take it: the
    breaker moves on from a fallback that raises it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        error = invalid_request(message, param=param)
        super().__init__(error.status, error.code, error.message, param=error.param)


def _unsupported(param: str, why: str = "") -> GatewayError:
    message = f"Parameter '{param}' has no equivalent on this provider's API and cannot be translated."
    return Untranslatable(f"{message} {why}".rstrip(), param=param)


def _bad(param: str, message: str) -> GatewayError:
    return Untranslatable(f"{param}: {message}", param=param)


# -- OpenAI chat completions -> Anthropic messages ------------------------------------------


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body as an Anthropic ``/v1/messages`` body."""
    out: dict[str, Any] = {}
    system: list[dict[str, Any]] = []
    tools_present = False
    for key, value in body.items():
        if value is None or key == "messages":
            continue
        if key == "model" or key == "stream" or key == "top_p" or key == "top_k":
            out[key] = value
        elif key == "temperature":
            # OpenAI's scale runs to 2, Anthropic's to 1.
            out[key] = min(value, 1.0) if isinstance(value, int | float) else value
        elif key in ("max_tokens", "max_completion_tokens"):
            out["max_tokens"] = value
        elif key == "stop":
            stops = _stop_sequences(value)
            if stops:
                out["stop_sequences"] = stops
        elif key == "tools":
            out["tools"] = [_tool_to_anthropic(tool, f"tools[{i}]") for i, tool in enumerate(value)]
            tools_present = bool(value)
        elif key in ("user", "safety_identifier"):
            out["metadata"] = {"user_id": value}
        elif key == "n":
            if value != 1:
                raise _unsupported("n", "Anthropic answers one choice per request; send n requests.")
        elif key == "logprobs":
            if value:
                raise _unsupported("logprobs")
        elif key in ("presence_penalty", "frequency_penalty"):
            if value:
                raise _unsupported(key)
        elif key == "logit_bias":
            if value:
                raise _unsupported(key)
        elif key == "modalities":
            if any(modality != "text" for modality in value):
                raise _unsupported("modalities", "Only text answers are translated.")
        elif key == "thinking":
            out[key] = value  # Anthropic's own option, sent through extra_body
        elif key in ("stream_options", "tool_choice", "parallel_tool_calls", "response_format"):
            continue  # below, once the whole body is known
        elif key in _IGNORED_OPENAI:
            continue
        else:
            raise _unsupported(key)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages", "expected a list of messages")
    out["messages"] = _messages_to_anthropic(messages, system) or [{"role": "user", "content": NO_TURNS}]
    _response_format(body.get("response_format"), out, system)
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    if "max_tokens" not in out:
        model = body.get("model")
        out["max_tokens"] = default_max_tokens(model if isinstance(model, str) else "")
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if tools_present and (choice is not None or parallel is False):
        tool_choice = _tool_choice_to_anthropic(choice if choice is not None else "auto")
        if parallel is False and tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = tool_choice
    return out


def _stop_sequences(value: Any) -> Any:
    """OpenAI's ``stop`` as Anthropic's list, without the empty and whitespace-only
    sequences Anthropic refuses with a 400 (OpenAI takes ``stop: ["\\n"]``)."""
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        return stops  # not a string or a list: Anthropic says what is wrong with it
    return [stop for stop in stops if not isinstance(stop, str) or stop.strip()]


def _tool_to_anthropic(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(
        tool.get("function"), dict
    ):
        raise _unsupported(f"{where}.type", "Only function tools are translated.")
    function = tool["function"]
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": function.get("name"), "input_schema": schema}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict") is True:
        out["strict"] = True
    return out


def _tool_choice_to_anthropic(choice: Any) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name")}
    raise _bad("tool_choice", "expected auto, required, none or a function")


def _response_format(value: Any, out: dict[str, Any], system: list[dict[str, Any]]) -> None:
    """json_schema becomes Anthropic's structured output (``output_config.format``);
    json_object, which has no schema, an instruction in the system prompt."""
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
            raise _bad("response_format.json_schema", "expected an object with a schema")
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema["schema"]}}
        return
    if kind == "json_object":
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
        return
    raise _unsupported("response_format.type")


JSON_OBJECT_INSTRUCTION = "Answer with one valid JSON object and nothing else."
#: the user turn of a conversation that is system messages alone: OpenAI answers one,
#: Anthropic refuses an empty messages list (LiteLLM sends the same placeholder)
NO_TURNS = "."


def _messages_to_anthropic(messages: list[Any], system: list[dict[str, Any]]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "expected an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(block for block in _text_blocks(content, f"{where}.content") if block["text"])
            continue
        if role == "user":
            blocks = _user_blocks(content, f"{where}.content")
            anthropic_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            anthropic_role = "assistant"
        elif role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
            parts = [block for block in _text_blocks(content, f"{where}.content") if block["text"]]
            if parts:
                result["content"] = parts[0]["text"] if len(parts) == 1 else parts
            blocks = [result]
            anthropic_role = "user"
        elif role == "function":
            raise _unsupported(f"{where}.role", "Legacy function messages are not translated; use tools.")
        else:
            raise _bad(f"{where}.role", f"unknown role {role!r}")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == anthropic_role:
            previous = turns[-1]["content"]
            if anthropic_role == "user" and blocks[0]["type"] == "tool_result":
                # Tool results must lead the user turn that answers the tool calls.
                head = [b for b in previous if b["type"] == "tool_result"]
                tail = [b for b in previous if b["type"] != "tool_result"]
                turns[-1]["content"] = head + blocks + tail
            else:
                previous.extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return turns


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of content parts")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or kind == "refusal":
            blocks.append({"type": "text", "text": part.get(kind)})
        else:
            raise _unsupported(f"{where}[{j}].type", "Only text parts are translated here.")
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of content parts")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise _bad(f"{where}[{j}].image_url", "expected a url")
            blocks.append({"type": "image", "source": _source(url, f"{where}[{j}].image_url.url")})
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            data = file.get("file_data")
            if not isinstance(data, str) or not data.startswith("data:"):
                raise _unsupported(f"{where}[{j}].file.file_id", "Only inline file_data (a data: URL) is translated.")
            blocks.append({"type": "document", "source": _source(data, f"{where}[{j}].file.file_data")})
        else:
            raise _unsupported(f"{where}[{j}].type")
    return blocks


def _source(url: str, where: str) -> dict[str, Any]:
    """A data: URL as a base64 source, anything else as a url source."""
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise _bad(where, "a data: URL must be base64 encoded")
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = [block for block in _text_blocks(message.get("content"), f"{where}.content") if block["text"]]
    if message.get("function_call") is not None:
        raise _unsupported(f"{where}.function_call", "Legacy function calls are not translated; use tools.")
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise _bad(f"{where}.tool_calls[{j}]", "expected a function call")
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = _decode(arguments) if isinstance(arguments, str) else arguments
        except (msgspec.DecodeError, RecursionError):
            raise _bad(f"{where}.tool_calls[{j}].function.arguments", "not valid JSON") from None
        if not isinstance(tool_input, dict):
            raise _bad(f"{where}.tool_calls[{j}].function.arguments", "expected a JSON object")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": tool_input})
    return blocks


# -- Anthropic messages -> OpenAI chat completions ------------------------------------------


def messages_to_chat(body: dict[str, Any], max_tokens_field: str = "max_completion_tokens") -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` body as an OpenAI ``/v1/chat/completions`` body.

    ``max_tokens_field`` is ``max_completion_tokens`` for OpenAI itself (its reasoning
    models refuse ``max_tokens``) and ``max_tokens`` for other compatible servers.
    """
    out: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    for key, value in body.items():
        if value is None or key in ("messages", "system"):
            continue
        if key in ("model", "temperature", "top_p"):
            out[key] = value
        elif key == "max_tokens":
            out[max_tokens_field] = value
        elif key == "stream":
            out["stream"] = value
            if value is True:
                out["stream_options"] = {"include_usage": True}
        elif key == "stop_sequences":
            if value:
                out["stop"] = value
        elif key == "metadata":
            user = value.get("user_id") if isinstance(value, dict) else None
            if user:
                out["user"] = user
        elif key == "tools":
            if value:  # OpenAI refuses an empty list ("expected an array with minimum length 1")
                out["tools"] = [_tool_to_openai(tool, f"tools[{i}]") for i, tool in enumerate(value)]
        elif key == "tool_choice":
            _tool_choice_to_openai(value, out)
        elif key == "thinking":
            if not isinstance(value, dict) or value.get("type") != "disabled":
                raise _unsupported("thinking", "Extended thinking is not translated to OpenAI reasoning.")
        elif key == "output_config":
            _output_config_to_openai(value, out)
        elif key in _IGNORED_ANTHROPIC:
            continue
        else:
            raise _unsupported(key)
    if "tools" not in out:
        # OpenAI refuses tool_choice and parallel_tool_calls without tools; Anthropic lets them be.
        out.pop("tool_choice", None)
        out.pop("parallel_tool_calls", None)
    system = body.get("system")
    if system:
        blocks = _anthropic_text(system, "system")
        messages.append({"role": "system", "content": blocks[0]["text"] if len(blocks) == 1 else blocks})
    turns = body.get("messages")
    if not isinstance(turns, list):
        raise _bad("messages", "expected a list of messages")
    for i, turn in enumerate(turns):
        _turn_to_openai(turn, f"messages[{i}]", messages)
    out["messages"] = messages
    return out


def _anthropic_text(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of text blocks")
    blocks = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _unsupported(f"{where}[{j}].type", "Only text blocks are translated here.")
        blocks.append({"type": "text", "text": block.get("text", "")})
    return blocks


def _tool_to_openai(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or "input_schema" not in tool:
        raise _unsupported(f"{where}.type", "Only client tools with an input_schema are translated.")
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice_to_openai(choice: Any, out: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise _bad("tool_choice", "expected auto, any, none or tool")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _output_config_to_openai(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise _bad("output_config", "expected an object")
    for key, setting in value.items():
        if setting is None:
            continue
        if key == "format" and isinstance(setting, dict) and setting.get("type") == "json_schema":
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": setting.get("schema")}}
        elif key == "effort" and setting in ("low", "medium", "high"):
            out["reasoning_effort"] = setting
        else:
            raise _unsupported(f"output_config.{key}")


def _turn_to_openai(turn: Any, where: str, messages: list[dict[str, Any]]) -> None:
    if not isinstance(turn, dict):
        raise _bad(where, "expected an object")
    role = turn.get("role")
    content = turn.get("content")
    if role == "system":
        blocks = _anthropic_text(content, f"{where}.content")
        messages.append({"role": "system", "content": blocks[0]["text"] if len(blocks) == 1 else blocks})
        return
    if role not in ("user", "assistant"):
        raise _bad(f"{where}.role", f"unknown role {role!r}")
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "expected a string or a list of content blocks")
    if role == "assistant":
        messages.append(_assistant_to_openai(content, where))
        return
    parts: list[dict[str, Any]] = []
    after_tools: list[dict[str, Any]] = []  # images returned by tools: a user turn after the tool messages
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            text, images = _tool_result_to_openai(block.get("content"), f"{at}.content")
            messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            after_tools.extend(images)
        else:
            parts.append(_user_part_to_openai(block, at))
    parts = after_tools + parts
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            messages.append({"role": "user", "content": parts[0]["text"]})
        else:
            messages.append({"role": "user", "content": parts})


def _user_part_to_openai(block: Any, where: str) -> dict[str, Any]:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _url(block.get("source"), f"{where}.source")}}
    if kind == "document":
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if source.get("type") == "text":
            return {"type": "text", "text": source.get("data", "")}
        if source.get("type") == "base64":
            file = {"filename": block.get("title") or "document.pdf", "file_data": _url(source, f"{where}.source")}
            return {"type": "file", "file": file}
        raise _unsupported(f"{where}.source.type", "Only base64 and text documents are translated.")
    raise _unsupported(f"{where}.type")


def _url(source: Any, where: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if kind == "url":
        return str(source.get("url"))
    raise _unsupported(f"{where}.type", "Only base64 and url sources are translated.")


def _tool_result_to_openai(content: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "image":
            images.append(_user_part_to_openai(block, f"{where}[{j}]"))
        else:
            raise _unsupported(f"{where}[{j}].type")
    return "\n".join(texts), images


def _assistant_to_openai(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = _encode(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # OpenAI takes no reasoning back
        else:
            raise _unsupported(f"{where}.content[{j}].type")
    content: Any = None
    if len(texts) == 1:
        content = texts[0]
    elif texts:  # blocks stay apart: joining would change the text the model wrote
        content = [{"type": "text", "text": text} for text in texts]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message
