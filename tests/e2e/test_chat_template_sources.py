"""Templates from the GGUF and from CHAT_TEMPLATE_FILE: the real embedded model ends its turn on the
template's turn-end token and the vocabulary's end-of-turn token, as with the built-in templates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from spaceserve.engine.engine import LlamaEngine
from spaceserve.settings import ModelSettings

from ..support.gguf import with_string_metadata
from ..support.servers import MODEL_ID

GEMMA_TEMPLATE = json.loads((Path(__file__).parents[1] / "support" / "reference_chat_templates.json").read_text())[
    "gemma"
]["chat_template"]


def load(model_source: Path, **settings: object) -> LlamaEngine:
    return LlamaEngine.load(
        ModelSettings(model_source=str(model_source), context_size=256, parallel_slots=1, cpu_cores=2, **settings),  # type: ignore[arg-type]
        MODEL_ID,
    )


@pytest.fixture(scope="module")
def gguf_with_template(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("gguf") / "with-template.gguf"
    return with_string_metadata(model_path, target, "tokenizer.chat_template", GEMMA_TEMPLATE)


@pytest.fixture(scope="module", params=["gguf", "file"])
def engine(request: pytest.FixtureRequest, model_path: Path, gguf_with_template: Path) -> Iterator[LlamaEngine]:
    if request.param == "gguf":
        loaded = load(gguf_with_template)
    else:
        template = gguf_with_template.parent / "gemma3.jinja"
        template.write_text(GEMMA_TEMPLATE)
        loaded = load(model_path, chat_template_file=template)
    yield loaded
    loaded.close()


def test_the_template_comes_from_where_it_was_configured(engine: LlamaEngine) -> None:
    assert engine.chat_format.name in ("gguf", "file:gemma3.jinja")
    prompt = engine.chat_format.render([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")


def test_the_templates_turn_end_token_ends_generation(engine: LlamaEngine) -> None:
    assert engine.chat_format.end_markers == ("<end_of_turn>",)
    end_of_turn = engine.model.single_token("<end_of_turn>")
    assert end_of_turn is not None and end_of_turn in engine.scheduler.end_tokens
    assert engine.model.eot == end_of_turn
