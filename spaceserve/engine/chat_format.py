"""Chat templates: the GGUF's own Jinja template, or a built-in one chosen by setting.

``CHAT_TEMPLATE=auto`` uses ``tokenizer.chat_template`` from the GGUF; a GGUF without one
falls back to the built-in template for its architecture (the embedded Gemma GGUF carries
none, and llama-cpp-python's Llama-2 fallback makes Gemma answer with nothing).
``CHAT_TEMPLATE=<name>`` picks a built-in; ``CHAT_TEMPLATE_FILE`` reads a Jinja file.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..settings import SettingsError

log = logging.getLogger("spaceserve.engine.chat_format")

# Gemma has no system role: the system text is folded into the first user turn
# (as Google's own template does) rather than dropped.
GEMMA = """{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + message['content'] + '\n\n' -%}
{%- else -%}
{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
<start_of_turn>{{ role }}
{% if role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}{{ message['content'] | trim }}<end_of_turn>
{% endif -%}
{%- endfor -%}
{%- if ns.system -%}
<start_of_turn>user
{{ ns.system | trim }}<end_of_turn>
{% endif -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}"""

# DeepSeek-Coder-Instruct's template, with its default system prompt when none is given. The
# generation prompt ends with a newline, as the model's own template renders it (a newline after
# ``{{ ... }}`` survives trim_blocks); without it the model writes the newline itself and the reply
# starts with it.
DEEPSEEK_CODER_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, "
    "and you only answer questions related to computer science. For politically sensitive questions, security "
    "and privacy issues, and other non-computer science questions, you will refuse to answer\n"
)
DEEPSEEK_CODER = """{%- set ns = namespace(found=false) -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}{%- set ns.found = true -%}{%- endif -%}
{%- endfor -%}
{{ bos_token }}
{%- if not ns.found -%}
{{ default_system }}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] }}
{%- elif message['role'] == 'user' -%}
{{ '### Instruction:\n' + message['content'] + '\n' }}
{%- else -%}
{{ '### Response:\n' + message['content'] + '\n<|EOT|>\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"""

# TinyLlama-1.1B-Chat-v1.0 uses the Zephyr format.
ZEPHYR = """{%- for message in messages -%}
{%- set role = 'user' if message['role'] not in ('system', 'assistant') else message['role'] -%}
{{ '<|' + role + '|>\n' + message['content'] + eos_token + '\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"""

CHATML = """{%- for message in messages -%}
{%- set role = message['role'] if message['role'] in ('system', 'assistant') else 'user' -%}
{{ '<|im_start|>' + role + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"""


# Turn-end markers of the common chat formats. A template from the GGUF or CHAT_TEMPLATE_FILE that
# writes one of them ends its turns with it, so the model does too: its token must end generation
# even when the vocabulary does not flag it as end-of-generation.
TURN_END_MARKERS = (
    "<|EOT|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
)


def end_markers_in(source: str) -> tuple[str, ...]:
    """The known turn-end markers written literally in a template's source."""
    return tuple(marker for marker in TURN_END_MARKERS if marker in source)


@dataclass(frozen=True)
class Builtin:
    source: str
    # Text markers that end a turn; their tokens count as end of generation.
    end_markers: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()


BUILTINS: dict[str, Builtin] = {
    "gemma": Builtin(GEMMA, ("<end_of_turn>",)),
    "deepseek-coder": Builtin(DEEPSEEK_CODER, ("<|EOT|>",), (("default_system", DEEPSEEK_CODER_SYSTEM),)),
    "zephyr": Builtin(ZEPHYR, ("</s>",)),
    "chatml": Builtin(CHATML, ("<|im_end|>",)),
}

# For GGUFs that carry no template, by ``general.architecture``.
ARCHITECTURE_DEFAULTS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}


# Placeholders from Unicode's private use area: no template's markup holds them.
MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"
MARKER = re.compile(f"{MARK_OPEN}(\\d+){MARK_CLOSE}")
Segment = tuple[str, bool]


@dataclass
class ChatFormat:
    name: str
    source: str
    bos_token: str
    eos_token: str
    end_markers: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()
    _template: Any = field(default=None, repr=False)
    _warned_unaligned: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        # The environment transformers renders chat templates in, so a model's own template gives
        # the prompt it was trained on: trim/lstrip blocks, {% break %}/{% continue %}, and the
        # raise_exception and strftime_now helpers.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except TemplateError as exc:
            raise SettingsError(f"chat template '{self.name}' does not compile: {exc}") from exc

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        return str(
            self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **dict(self.variables),
            )
        )

    def render_segments(self, messages: list[dict[str, str]]) -> list[Segment]:
        """The rendered prompt as ``(text, from_a_message)`` pieces, in order.

        Only the template's own text may hold control tokens (``<start_of_turn>``); a message's
        content is text, whatever it says. The template is rendered twice: with each content
        replaced by a placeholder (so every other piece is the template's markup) and as usual; the
        contents are then found between the markup pieces of the real rendering, as they are or as
        the template stripped them (Gemma trims). A template that changes contents in other ways
        gets them unchanged between its markup (safe, though no longer byte-identical).
        """
        rendered = self.render(messages)
        markers = [f"{MARK_OPEN}{i}{MARK_CLOSE}" for i in range(len(messages))]
        skeleton = self.render([{**m, "content": markers[i]} for i, m in enumerate(messages)])
        parts = MARKER.split(skeleton)
        markup, order = parts[0::2], [int(i) for i in parts[1::2]]
        contents = [m["content"] for m in messages]
        aligned = _align(rendered, markup, [contents[i] for i in order])
        if aligned is not None:
            return aligned
        if not self._warned_unaligned:
            self._warned_unaligned = True
            log.warning("chat template %s changes message contents; they are placed unchanged", self.name)
        segments: list[Segment] = [(markup[0], False)]
        for text, index in zip(markup[1:], order, strict=True):
            segments += [(contents[index], True), (text, False)]
        return segments


def _align(rendered: str, markup: list[str], contents: list[str]) -> list[Segment] | None:
    """``rendered`` cut into ``markup[0], contents[0], markup[1], ...``, each content as given or
    stripped; None when it does not cut so."""
    if not rendered.startswith(markup[0]):
        return None
    segments: list[Segment] = [(markup[0], False)]
    pos = len(markup[0])
    for content, after in zip(contents, markup[1:], strict=True):
        for candidate in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
            end = pos + len(candidate)
            if rendered.startswith(candidate, pos) and rendered.startswith(after, end):
                segments += [(candidate, True), (after, False)]
                pos = end + len(after)
                break
        else:
            return None
    return segments if pos == len(rendered) else None


def _raise(message: str) -> None:
    raise ValueError(message)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def resolve_chat_format(
    setting: str,
    template_file: Path | None,
    gguf_template: str | None,
    architecture: str,
    bos_token: str,
    eos_token: str,
) -> ChatFormat:
    """Pick the chat template from the settings and the GGUF; explain which setting to change."""

    def make(name: str, source: str, builtin: Builtin | None = None) -> ChatFormat:
        if builtin is None:
            return ChatFormat(name, source, bos_token, eos_token, end_markers_in(source))
        return ChatFormat(name, source, bos_token, eos_token, builtin.end_markers, builtin.variables)

    if template_file is not None:
        try:
            return make(f"file:{template_file.name}", template_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"CHAT_TEMPLATE_FILE: cannot read {template_file}: {exc.strerror}") from exc
    if setting != "auto":
        builtin = BUILTINS.get(setting)
        if builtin is None:
            allowed = ", ".join(["auto", *BUILTINS])
            raise SettingsError(
                f"CHAT_TEMPLATE={setting!r} is not known; allowed: {allowed} (or set CHAT_TEMPLATE_FILE)"
            )
        return make(setting, builtin.source, builtin)
    if gguf_template:
        return make("gguf", gguf_template)
    fallback = ARCHITECTURE_DEFAULTS.get(architecture)
    if fallback is None:
        raise SettingsError(
            f"the GGUF carries no chat template and architecture {architecture!r} has no built-in one; "
            f"set CHAT_TEMPLATE to one of {', '.join(BUILTINS)} or CHAT_TEMPLATE_FILE"
        )
    builtin = BUILTINS[fallback]
    return make(fallback, builtin.source, builtin)
