"""Narrow unit tests: stop strings across token boundaries, UTF-8 across tokens, chat templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from spaceserve.engine.chat_format import resolve_chat_format
from spaceserve.engine.source import HubFile, ModelSourceError, default_model_id
from spaceserve.engine.text import TextStream
from spaceserve.settings import SettingsError


def run(stream: TextStream, pieces: list[bytes]) -> str:
    out = "".join(stream.feed(p) for p in pieces if not stream.stopped)
    return out + stream.flush()


def test_stop_string_split_across_pieces_is_cut_and_not_emitted() -> None:
    stream = TextStream(["END"])
    assert run(stream, [b"hello E", b"N", b"D and more"]) == "hello "
    assert stream.stopped


def test_held_back_prefix_is_released_when_it_does_not_complete() -> None:
    stream = TextStream(["END"])
    assert stream.feed(b"hello E") == "hello "
    assert stream.feed(b"Nx") == "ENx"
    assert not stream.stopped


def test_earliest_of_several_stops_wins() -> None:
    assert run(TextStream(["b", "a"]), [b"xxab"]) == "xx"


def test_multibyte_character_split_across_tokens() -> None:
    euro = "€".encode()
    stream = TextStream([])
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:]) == "€"


def test_no_stops_streams_everything_at_once() -> None:
    stream = TextStream([])
    assert stream.feed(b"abc") == "abc"


def chat(name: str, gguf: str | None = None, arch: str = "llama"):  # type: ignore[no-untyped-def]
    return resolve_chat_format(name, None, gguf, arch, "<s>", "</s>")


def test_gemma_folds_the_system_message_into_the_first_user_turn() -> None:
    text = chat("gemma").render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert text == (
        "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_keeps_a_lone_system_message() -> None:
    text = chat("gemma").render([{"role": "system", "content": "Only this."}])
    assert "Only this." in text and text.endswith("<start_of_turn>model\n")


def test_deepseek_coder_format_and_default_system() -> None:
    text = chat("deepseek-coder").render([{"role": "user", "content": "Write a div"}])
    assert text.startswith("<s>You are an AI programming assistant")
    assert text.endswith("### Instruction:\nWrite a div\n### Response:\n")
    custom = chat("deepseek-coder").render([{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q"}])
    assert custom == "<s>SYS### Instruction:\nQ\n### Response:\n"


def test_zephyr_format_for_tinyllama() -> None:
    text = chat("zephyr").render([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert text == "<|system|>\nS</s>\n<|user|>\nQ</s>\n<|assistant|>\n"


def test_auto_uses_gguf_template_then_architecture_default() -> None:
    assert chat("auto", gguf="{{ messages[0]['content'] }}").render([{"role": "user", "content": "x"}]) == "x"
    assert chat("auto", arch="gemma3").name == "gemma"
    with pytest.raises(SettingsError, match="CHAT_TEMPLATE"):
        chat("auto", arch="mystery")
    with pytest.raises(SettingsError, match="allowed"):
        chat("nonsense")


def test_template_file_override(tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    fmt = resolve_chat_format("auto", path, None, "llama", "", "")
    assert fmt.render([{"role": "user", "content": "hi"}]) == "[user]hi"


def test_hub_source_parsing_and_default_ids() -> None:
    hub = HubFile.parse("hf://TheBloke/deepseek-coder-1.3b-instruct-GGUF/deepseek-coder-1.3b-instruct.Q4_K_M.gguf")
    assert hub.repo_id == "TheBloke/deepseek-coder-1.3b-instruct-GGUF"
    assert hub.filename == "deepseek-coder-1.3b-instruct.Q4_K_M.gguf" and hub.revision is None
    pinned = HubFile.parse("hf://o/n@v1.0/sub/dir/m.gguf")
    assert (pinned.repo_id, pinned.revision, pinned.filename) == ("o/n", "v1.0", "sub/dir/m.gguf")
    with pytest.raises(ModelSourceError, match="MODEL_SOURCE"):
        HubFile.parse("hf://only-owner/file.gguf")
    assert (
        default_model_id("hf://o/n/deepseek-coder-1.3b-instruct.Q4_K_M.gguf") == "deepseek-coder-1.3b-instruct.Q4_K_M"
    )
    assert default_model_id("/models/x.gguf") == "x"
