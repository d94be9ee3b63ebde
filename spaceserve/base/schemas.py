"""OpenAI wire models: requests as clients send them, responses and stream chunks as they expect.

Unknown request fields are accepted and ignored (clients send ``user``, ``metadata`` and the
like); fields whose meaning we cannot honour (``n`` > 1, ``tools``, ``echo``) are refused
with a 400 rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import InvalidRequest

# Sampling defaults, declared once: the engine's SamplingParams takes them from here. top_k and min_p
# are llama.cpp's fields (OpenAI has neither), with llama-server's defaults; the rest are OpenAI's.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


# Which OpenAI completion endpoint a request came to: /v1/chat/completions or /v1/completions.
Endpoint = Literal["chat", "text"]


def lone_surrogate_at(value: Any, path: str = "") -> str | None:
    """Where in a parsed JSON value a string (or key) holds a lone UTF-16 surrogate, else None.

    JSON's ``"\\ud800"`` escape decodes to such a string, which is no Unicode text: it cannot be
    encoded as UTF-8 for the tokenizer or for an error message that quotes it.
    """
    if isinstance(value, str):
        return None if value.isascii() or _encodable(value) else path or "body"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{_shown(key)}" if path else _shown(key)
            if not _encodable(str(key)):
                return where
            found = lone_surrogate_at(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_at(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(key: object) -> str:
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


class UnicodeBody(BaseModel):
    """A request body whose every string must be valid Unicode (the proxy's bodies too)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # Raised as the API error itself (pydantic passes it through) so that the 400 names the field.
        where = lone_surrogate_at(data)
        if where is not None:
            raise InvalidRequest(
                f"invalid value for '{where}': the text holds a lone UTF-16 surrogate (a \\ud800-\\udfff "
                "escape without its pair), which is not valid Unicode",
                param=where,
            )
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content part of type '{part.type}' is not supported; only 'text' parts are")
            texts.append(part.text)
        return "".join(texts)


class SamplingFields(UnicodeBody):
    """Parameters shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(default=DEFAULT_TOP_P, gt=0.0, le=1.0)
    top_k: int = Field(default=DEFAULT_TOP_K, ge=0)  # 0 turns it off
    min_p: float = Field(default=DEFAULT_MIN_P, ge=0.0, le=1.0)  # 0 turns it off
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    # Token id (as a string, as OpenAI's) -> bias added to its logit; -100 bans it, 100 all but forces it.
    logit_bias: dict[str, float] | None = None
    # Per-request deadline in seconds, capped by the server's REQUEST_TIMEOUT.
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send separate requests for more choices")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > 16:
                raise ValueError("at most 16 stop sequences are supported")
            if any(not item for item in value):
                raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids (non-negative integers as strings), not '{key}'")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be between -100 and 100; token {key} has {bias}")
        if value and len(value) > 1024:
            raise ValueError("at most 1024 token biases are supported")
        return value

    def token_biases(self) -> dict[int, float]:
        return {int(key): bias for key, bias in (self.logit_bias or {}).items()}

    def logprobs_wanted(self) -> int | None:
        """None when no logprobs were asked for, else how many alternatives each token shows."""
        raise NotImplementedError

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema", default_factory=dict)
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text`` (free), ``json_object`` (any JSON object) or ``json_schema`` (an instance of the schema)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with 'name' and 'schema'")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calling is not supported by this server")
        return value

    @model_validator(mode="after")
    def _message_texts(self) -> ChatCompletionRequest:
        for message in self.messages:
            message.text()  # raises for unsupported content parts
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            # Found by fuzzing: ids outside the vocabulary made llama_decode fail. Ids at or above
            # this model's vocabulary size still have to be caught where the vocabulary is known.
            if isinstance(value[0], int) and any(not 0 <= token < 2**31 for token in value):
                raise ValueError("token ids must be non-negative integers below the model's vocabulary size")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported by this server")
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return self

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def token_limit(self) -> int | None:
        # The legacy completions API defaults to 16 tokens, as OpenAI's does.
        return self.max_tokens if self.max_tokens is not None else 16


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
