"""The upstream list: the shipped example loads, YAML works, and every mistake names entry and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spaceserve.proxy.config import CATCH_ALL, load_proxy_config, parse_proxy_config
from spaceserve.settings import ProxySettings, SettingsError

from ..support.servers import REPO, ServerProcess

EXAMPLE = REPO / "spaces" / "proxy" / "upstreams.example.json"
EXAMPLE_KEYS = {
    "PRIMARY_API_KEY": "sk-primary-secret",
    "FALLBACK_API_KEY": "sk-fallback-secret",
    "OPENAI_API_KEY": "sk-openai-secret",
    "HF_TOKEN": "hf_router_secret",
}


def settings(**values: Any) -> ProxySettings:
    return ProxySettings(_env_file=None, **values)  # type: ignore[call-arg]


def one(**fields: Any) -> dict[str, Any]:
    return {"name": "a", "base_url": "http://127.0.0.1:9/v1", **fields}


def test_example_reproduces_the_four_tier_cascade() -> None:
    config = load_proxy_config(settings(upstreams_file=EXAMPLE), EXAMPLE_KEYS)
    assert [tier.name for tier in config.tiers] == ["primary", "fallback", "openai", "hf-router"]
    cascade = config.aliases["deepseek-coder-1.3b-instruct"]
    assert [tier.name for tier in cascade] == ["primary", "fallback", "openai", "hf-router"]
    assert config.tiers[-1].members[0].base_url == "https://router.huggingface.co/v1"
    assert config.keys["openai"] == "sk-openai-secret"
    # The key is held, but no representation of the config shows it.
    assert "sk-openai-secret" not in repr(config)


def test_example_names_its_keys_instead_of_holding_them() -> None:
    text = EXAMPLE.read_text()
    for name in EXAMPLE_KEYS:
        assert f'"api_key_env": "{name}"' in text
    assert "sk-" not in text and "hf_" not in text


def test_yaml_file_with_replicas_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text(
        "upstreams:\n"
        "  - name: spaces\n"
        "    model: tinyllama\n"
        "    first_byte_timeout: 20\n"
        "    replicas:\n"
        "      - {name: space-a, base_url: 'https://a.hf.space/v1'}\n"
        "      - {name: space-b, base_url: 'https://b.hf.space/v1', first_byte_timeout: 5}\n"
        "  - {name: local, kind: hf-text-generation, base_url: 'http://127.0.0.1:8080/generate'}\n"
        "aliases:\n"
        "  coder: [spaces, local]\n"
        "  only-b: [space-b]\n"
    )
    config = load_proxy_config(settings(upstreams_file=path), {})
    spaces = config.tiers[0]
    assert [member.name for member in spaces.members] == ["space-a", "space-b"]
    # Group fields are defaults; a replica's own value wins.
    assert [member.model for member in spaces.members] == ["tinyllama", "tinyllama"]
    assert [member.first_byte_timeout for member in spaces.members] == [20, 5]
    assert [tier.name for tier in config.aliases["coder"]] == ["spaces", "local"]
    assert [m.name for tier in config.aliases["only-b"] for m in tier.members] == ["space-b"]
    assert config.tiers[1].members[0].probe_url() is None
    assert spaces.members[0].probe_url() == "https://a.hf.space/health"


def test_bare_list_accepts_any_model_through_every_tier() -> None:
    config = parse_proxy_config([one(), one(name="b", model="m-b")], {})
    assert [tier.name for tier in config.aliases[CATCH_ALL]] == ["a", "b"]
    assert not config.explicit_aliases


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([{"name": "a"}], "upstreams[0] (name 'a'): field 'base_url': missing"),
        ([one(), one(name="b", kind="grpc")], "upstreams[1] (name 'b'): field 'kind'"),
        ([one(connect_timeout=0)], "upstreams[0] (name 'a'): field 'connect_timeout': Input should be greater than 0"),
        ([one(base_url="ftp://x/v1")], "field 'base_url': must be an http:// or https:// URL"),
        ([one(base_url="https://x.hf.space")], "field 'base_url': an OpenAI-compatible upstream's base_url must end"),
        ([one(first_byte_timeout=100, total_timeout=10)], "field 'first_byte_timeout': must not be longer than total"),
        ([one(timeout=5)], "upstreams[0] (name 'a'): field 'timeout': unknown field; allowed:"),
        ([one(api_key_env="sk-abc")], "field 'api_key_env': must be the name of an environment variable"),
        ([one(), one()], "the name 'a' is used twice"),
        ([one(name="bad name")], "upstreams[0] (name 'bad name'): field 'name'"),
        (["http://x/v1"], "upstreams[0]: must be an object"),
        ([], "the upstream list is empty"),
        ({"upstreams": [one()], "routes": {}}, "unknown top-level field(s) ['routes']"),
        ({"upstreams": [one()], "aliases": {"m": ["a", "zz"]}}, "aliases['m']: unknown upstream or group name(s)"),
        ({"upstreams": [one(enabled=False)], "aliases": {"m": ["a"]}}, "aliases['m']: every upstream it names is"),
        (
            [{"name": "pool", "replicas": [one(name="r1"), one(name="r2", connect_timeout=-1)]}],
            "upstreams[0] (name 'pool') replicas[1] (name 'r2'): field 'connect_timeout'",
        ),
        ([{"name": "pool", "replicas": []}], "upstreams[0] (name 'pool'): field 'replicas': must be a non-empty list"),
        (
            [one(), one(name="b", api_key_env="NOT_SET_ANYWHERE")],
            "upstreams[1] (name 'b'): field 'api_key_env': the environment variable NOT_SET_ANYWHERE is not set",
        ),
    ],
)
def test_mistakes_name_the_entry_and_the_field(raw: Any, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_proxy_config(settings(upstreams=json.dumps(raw)), {})
    message = str(caught.value)
    assert message.startswith("UPSTREAMS: ")
    assert expected in message


def test_a_key_written_in_the_list_is_refused_without_being_repeated() -> None:
    with pytest.raises(SettingsError) as caught:
        load_proxy_config(settings(upstreams=json.dumps([one(api_key="sk-live-123456")])), {})
    message = str(caught.value)
    assert "upstreams[0] (name 'a'): field 'api_key'" in message
    assert "api_key_env" in message
    assert "sk-live-123456" not in message


def test_a_disabled_upstream_needs_no_key() -> None:
    config = parse_proxy_config([one(), one(name="b", api_key_env="NOT_SET_ANYWHERE", enabled=False)], {})
    assert "b" not in config.keys


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "set UPSTREAMS (inline JSON) or UPSTREAMS_FILE"),
        ({"upstreams": "[", "upstreams_file": Path("x.json")}, "not both"),
        ({"upstreams": "[{'name': 'a'}]"}, "UPSTREAMS: not valid JSON"),
        ({"upstreams_file": Path("/nonexistent/upstreams.json")}, "cannot read it"),
    ],
)
def test_source_errors(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_proxy_config(settings(**values), {})
    assert expected in str(caught.value)


def test_bad_yaml_says_so(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.yml"
    path.write_text("upstreams: [name: a\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_proxy_config(settings(upstreams_file=path), {})


def test_the_server_refuses_to_start_and_names_the_problem(tmp_path: Path) -> None:
    bad = [one(), {"name": "b", "base_url": "http://127.0.0.1:9/v1", "first_byte_timeout": "soon"}]
    server = ServerProcess({"SPACE_TEMPLATE": "proxy", "UPSTREAMS": json.dumps(bad)}, tmp_path / "proxy.log")
    try:
        assert server.proc.wait(timeout=60) == 2
        assert "UPSTREAMS: upstreams[1] (name 'b'): field 'first_byte_timeout'" in server.log()
    finally:
        server.stop()
