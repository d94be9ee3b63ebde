"""Each built-in chat template against the model's own template, byte for byte.

The reference templates (tests/support/reference_chat_templates.json) are rendered the way
transformers' ``apply_chat_template`` renders them: a sandboxed Jinja environment with trim_blocks,
lstrip_blocks, the loopcontrols extension and ``raise_exception``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from spaceserve.engine.chat_format import BUILTINS, resolve_chat_format

REFERENCES = json.loads((Path(__file__).parents[1] / "support" / "reference_chat_templates.json").read_text())


def reference_render(name: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    ref = REFERENCES[name]
    return env.from_string(ref["chat_template"]).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=ref["bos_token"],
        eos_token=ref["eos_token"],
    )


SYSTEM = {"role": "system", "content": "You write HTML.\nKeep it short."}
CONVERSATIONS = {
    "system+user": [SYSTEM, {"role": "user", "content": "Make a red button"}],
    "user only": [{"role": "user", "content": "Hello"}],
    "multi-turn": [
        SYSTEM,
        {"role": "user", "content": "Make a page"},
        {"role": "assistant", "content": "<html><body>Hi</body></html>"},
        {"role": "user", "content": "Make it blue"},
        {"role": "assistant", "content": "<html><body style='color:blue'>Hi</body></html>"},
        {"role": "user", "content": "Add a title"},
    ],
    "multi-turn without system": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who are you"},
    ],
    "whitespace around content": [
        {"role": "user", "content": "  padded question \n"},
        {"role": "assistant", "content": "\n   I am an assistant   "},
        {"role": "user", "content": "Another question"},
    ],
    "ends with an assistant turn": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
    ],
}


def builtin(name: str):  # type: ignore[no-untyped-def]
    ref = REFERENCES[name]
    return resolve_chat_format(name, None, None, "llama", ref["bos_token"], ref["eos_token"])


def test_every_builtin_has_a_reference() -> None:
    assert set(BUILTINS) == {k for k in REFERENCES if not k.startswith("_")}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_renders_like_the_models_own_template(
    name: str, conversation: str, add_generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[conversation]
    expected = reference_render(name, messages, add_generation_prompt)
    assert builtin(name).render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_deepseek_coder_generation_prompt_ends_with_a_newline() -> None:
    # llama.cpp's expected rendering of the same template (tests/test-chat-template.cpp).
    messages = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who are you"},
        {"role": "assistant", "content": "   I am an assistant   "},
        {"role": "user", "content": "Another question"},
    ]
    expected = (
        "You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n"
        "### Instruction:\nWho are you\n### Response:\n   I am an assistant   \n<|EOT|>\n"
        "### Instruction:\nAnother question\n### Response:\n"
    )
    fmt = resolve_chat_format("deepseek-coder", None, None, "llama", "", "<|EOT|>")
    assert fmt.render(messages) == expected


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_the_models_own_template_from_the_gguf_renders_as_transformers_does(name: str) -> None:
    ref = REFERENCES[name]
    fmt = resolve_chat_format("auto", None, ref["chat_template"], "llama", ref["bos_token"], ref["eos_token"])
    for messages in CONVERSATIONS.values():
        assert fmt.render(messages) == reference_render(name, messages, True)


@pytest.mark.parametrize(
    ("name", "markers"),
    [("deepseek-coder", ("<|EOT|>",)), ("gemma", ("<end_of_turn>",)), ("chatml", ("<|im_end|>",)), ("zephyr", ())],
)
def test_templates_from_the_gguf_or_a_file_get_their_turn_end_markers(
    name: str, markers: tuple[str, ...], tmp_path: Path
) -> None:
    source = REFERENCES[name]["chat_template"]
    assert resolve_chat_format("auto", None, source, "llama", "", "").end_markers == markers
    path = tmp_path / "template.jinja"
    path.write_text(source)
    assert resolve_chat_format("auto", path, None, "llama", "", "").end_markers == markers


def test_loop_controls_are_enabled() -> None:
    # Keep only the messages after the last system message, as some templates do with {% break %}.
    source = (
        "{% for m in messages | reverse %}{% if m['role'] == 'system' %}{% break %}{% endif %}"
        "{% if m['role'] == 'tool' %}{% continue %}{% endif %}[{{ m['content'] }}]{% endfor %}"
    )
    fmt = resolve_chat_format("auto", None, source, "llama", "", "")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "s"},
        {"role": "user", "content": "b"},
        {"role": "tool", "content": "t"},
        {"role": "user", "content": "c"},
    ]
    assert fmt.render(messages) == "[c][b]"
