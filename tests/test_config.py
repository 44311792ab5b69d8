"""The config model is the one source of defaults and choices; listen addresses parse once."""

from __future__ import annotations

import dataclasses
import secrets
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from gateway.config import (
    AuthConfig,
    Config,
    ConfigError,
    IdentityConfig,
    KeysConfig,
    LdapConfig,
    LoginLimitsConfig,
    MfaConfig,
    Route,
    ServerConfig,
    SessionConfig,
    SqlUsersConfig,
    StoreConfig,
    build_config,
    load_config,
)
from gateway.healthcheck import health_url
from gateway.metrics import start_admin_listener
from tests.conftest import free_port

ROUTE = {"name": "site", "path": "/", "upstream": "http://127.0.0.1:9"}

# each config table, the dataclass it becomes, and where that lands in the Config
TABLES: list[tuple[str, type, Callable[[Config], Any]]] = [
    ("server", ServerConfig, lambda c: c.server),
    ("auth", AuthConfig, lambda c: c.auth),
    ("auth.sql", SqlUsersConfig, lambda c: c.auth.sql),
    ("auth.ldap", LdapConfig, lambda c: c.auth.ldap),
    ("session", SessionConfig, lambda c: c.session),
    ("keys", KeysConfig, lambda c: c.keys),
    ("store", StoreConfig, lambda c: c.store),
    ("login_limits", LoginLimitsConfig, lambda c: c.login_limits),
    ("identity", IdentityConfig, lambda c: c.identity),
    ("mfa", MfaConfig, lambda c: c.mfa),
    ("routes[0]", Route, lambda c: c.routes[0]),
    # a route's unset identity keys come from [identity], here itself all defaults
    ("routes[0] identity", IdentityConfig, lambda c: c.routes[0].identity),
]


def _defaulted_fields() -> list[Any]:
    cases = []
    for table, model, pick in TABLES:
        for spec in dataclasses.fields(model):
            if spec.default is dataclasses.MISSING:
                continue  # required (route name, path, upstream) or a nested table of its own
            cases.append(pytest.param(model, spec, pick, id=f"{table}.{spec.name}"))
    return cases


def _expected(value: object, base_dir: Path) -> object:
    # relative paths in the model are relative to the config file's folder
    return base_dir / value if isinstance(value, Path) else value


def _minimal(tmp_path: Path) -> Config:
    return build_config({"routes": [dict(ROUTE)]}, tmp_path, env={})


@pytest.mark.parametrize("model,spec,pick", _defaulted_fields())
def test_an_omitted_key_takes_the_model_default(tmp_path, model, spec, pick):
    loaded = getattr(pick(_minimal(tmp_path)), spec.name)
    assert loaded == _expected(spec.default, tmp_path)


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, Path):
        return Path("changed")
    assert isinstance(value, tuple), value
    return ("changed",)


# the fields whose default is None (unset), and something else they could default to
CHANGED_NONE = {
    "host": "changed.example",
    "methods": frozenset({"PATCH"}),
    "ca_file": Path("changed-ca.pem"),
}


# a default that is a rule rather than a value
RULES = {
    (ServerConfig, "public_url"): "unset, it is local_url(port), following server.listen",
    # a list of [[auth.oidc]] tables: none unless given (tests/test_oidc.py reads each key)
    (AuthConfig, "oidc"): "no providers unless configured",
}
PROVIDER = {
    "name": "corp",
    "issuer": "https://idp.corp.test",
    "client_id": "gateway",
    "client_secret": "s3cret-of-the-client",
    "id_prefix": "corp:",
}
# a changed default that another rule allows only with more config
NEEDS = {
    (KeysConfig, "secret"): (secrets.token_urlsafe(48), {"keys": {"algorithm": "HS256"}}),
    (SessionConfig, "domain"): ("corp.test", {"server": {"public_url": "https://login.corp.test"}}),
    (Route, "pass_access_token"): (True, {"auth": {"oidc": [PROVIDER]}}),
    # the relying party is public_url's host or a domain it is under
    (MfaConfig, "rp_id"): ("corp.test", {"server": {"public_url": "https://login.corp.test"}}),
}


@pytest.mark.parametrize(
    "model,spec,pick",
    # public_url's unset default follows server.listen: its own test covers it
    [case for case in _defaulted_fields() if (case.values[0], case.values[1].name) not in RULES],
)
def test_changing_the_model_default_changes_what_an_omitted_key_gets(
    tmp_path, monkeypatch, model, spec, pick
):
    if (model, spec.name) in NEEDS:
        new, raw = NEEDS[model, spec.name]
    elif spec.default is None:
        new, raw = CHANGED_NONE[spec.name], {}
    else:
        new, raw = _changed(spec.default), {}
    monkeypatch.setattr(model.__dataclass_fields__[spec.name], "default", new)
    loaded = getattr(pick(build_config({**raw, "routes": [ROUTE]}, tmp_path, env={})), spec.name)
    assert loaded == _expected(new, tmp_path)


def test_an_unset_public_url_follows_the_listen_port(tmp_path):
    raw = {"server": {"listen": "127.0.0.1:8123"}, "routes": [ROUTE]}
    assert build_config(raw, tmp_path, env={}).server.public_url == "http://localhost:8123"


def _literal_fields() -> list[tuple[type, str, Any]]:
    found = []
    models = {model for _, model, _ in TABLES}
    for model in sorted(models, key=lambda m: m.__name__):
        for name, hint in typing.get_type_hints(model).items():
            literals = [hint] if typing.get_origin(hint) is Literal else []
            literals += [a for a in typing.get_args(hint) if typing.get_origin(a) is Literal]
            if literals:
                found.append((model, name, hint))
    return found


# the Literal-typed fields, where they are written in gateway.toml
CHOICES = {
    (AuthConfig, "users"): ("auth", "users"),
    (SessionConfig, "same_site"): ("session", "same_site"),
    (SessionConfig, "revocation"): ("session", "revocation"),
    (KeysConfig, "algorithm"): ("keys", "algorithm"),
    (Route, "auth"): ("routes[0]", "auth"),
}
# what else a choice needs to be valid
CHOICE_NEEDS = {
    ("users", "sql"): {
        "sql": {"dsn": "sqlite:///users.db", "query": "SELECT id, hash FROM u WHERE n = :username"}
    },
    ("users", "ldap"): {
        "ldap": {"bind_dn": "cn=gw,dc=t", "bind_password": "pw", "base_dn": "ou=people,dc=t"}
    },
    ("algorithm", "HS256"): {"secret": secrets.token_urlsafe(48)},
}


def _with(table: str, values: dict[str, Any]) -> dict[str, Any]:
    if table == "routes[0]":
        return {"routes": [{**ROUTE, **values}]}
    return {table: values, "routes": [ROUTE]}


def test_every_literal_field_is_covered_here():
    covered = set(CHOICES) | {(SessionConfig, "secure")}
    assert {(model, name) for model, name, _ in _literal_fields()} == covered


@pytest.mark.parametrize("model,name", list(CHOICES), ids=[f"{t}.{k}" for t, k in CHOICES.values()])
def test_a_bad_choice_lists_exactly_the_model_literal(tmp_path, model, name):
    table, key = CHOICES[model, name]
    allowed = typing.get_args(typing.get_type_hints(model)[name])
    with pytest.raises(ConfigError) as info:
        build_config(_with(table, {key: "bogus"}), tmp_path, env={})
    listed = ", ".join(repr(a) for a in allowed)
    assert info.value.errors == [f"{table}.{key}: 'bogus' is not one of {listed}"]


@pytest.mark.parametrize("model,name", list(CHOICES), ids=[f"{t}.{k}" for t, k in CHOICES.values()])
def test_every_model_literal_is_accepted(tmp_path, model, name):
    table, key = CHOICES[model, name]
    for choice in typing.get_args(typing.get_type_hints(model)[name]):
        values = {key: choice, **CHOICE_NEEDS.get((key, choice), {})}
        config = build_config(_with(table, values), tmp_path, env={})
        section = config.routes[0] if table == "routes[0]" else getattr(config, table)
        assert getattr(section, key) == choice


def test_secure_takes_its_words_from_the_model(tmp_path):
    hint = typing.get_type_hints(SessionConfig)["secure"]
    words = [w for a in typing.get_args(hint) if a is not bool for w in typing.get_args(a)]
    assert words == ["auto"]
    with pytest.raises(ConfigError) as info:
        build_config(_with("session", {"secure": "sometimes"}), tmp_path, env={})
    assert info.value.errors == ["session.secure: 'sometimes' must be \"auto\", true or false"]
    for value in [*words, True, False]:
        config = build_config(_with("session", {"secure": value}), tmp_path, env={})
        assert config.session.secure == value


@pytest.mark.parametrize(
    "written,host,port",
    [
        (None, "127.0.0.1", 9100),
        ("0.0.0.0:9300", "0.0.0.0", 9300),
        ("[::1]:9200", "::1", 9200),
        ("metrics.internal:9400", "metrics.internal", 9400),
    ],
    ids=["the default", "a wildcard", "an IPv6 literal in brackets", "a host name"],
)
def test_admin_listen_is_kept_as_written_and_as_host_and_port(tmp_path, written, host, port):
    server = {} if written is None else {"admin_listen": written}
    config = build_config({"server": server, "routes": [ROUTE]}, tmp_path, env={})
    assert config.server.admin_listen == (written or ServerConfig.admin_listen)
    assert (config.server.admin_host, config.server.admin_port) == (host, port)


@pytest.mark.parametrize(
    "written,url",
    [
        ("127.0.0.1:8123", "http://127.0.0.1:8123/.auth/health"),
        ("0.0.0.0:8124", "http://127.0.0.1:8124/.auth/health"),
        ("[::1]:8125", "http://[::1]:8125/.auth/health"),
    ],
    ids=["loopback", "a wildcard is asked on loopback", "IPv6 gets its brackets back"],
)
def test_listen_is_parsed_once_and_the_healthcheck_uses_it(tmp_path, written, url):
    config = build_config({"server": {"listen": written}, "routes": [ROUTE]}, tmp_path, env={})
    assert config.server.listen == written
    assert health_url(config) == url


def test_the_metrics_listener_binds_the_parsed_admin_address(tmp_path):
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f'[server]\nadmin_listen = "127.0.0.1:{free_port()}"\n\n'
        '[[routes]]\nname = "site"\npath = "/"\nupstream = "http://127.0.0.1:9"\n'
    )
    server = load_config(config_file, env={}).server
    listener = start_admin_listener(server.admin_host, server.admin_port)
    assert listener is not None
    try:
        assert listener.port == server.admin_port
        response = httpx.get(f"http://{server.admin_listen}/metrics", trust_env=False)
        assert response.status_code == 200
    finally:
        listener.close()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_duration_that_is_not_a_finite_number_is_refused(tmp_path, value):
    raw = {"routes": [{**ROUTE, "timeout": value}]}
    with pytest.raises(ConfigError) as info:
        build_config(raw, tmp_path, env={})
    assert info.value.errors == [f"routes[0].timeout: {value!r} is not a duration"]


def test_a_bad_admin_listen_names_the_field(tmp_path):
    raw = {"server": {"admin_listen": "nowhere"}, "routes": [ROUTE]}
    with pytest.raises(ConfigError) as info:
        build_config(raw, tmp_path, env={})
    assert info.value.errors == ["server.admin_listen: 'nowhere' is not \"host:port\""]


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:hunter2@127.0.0.1:26379",
        "postgresql://gw:hunter2@127.0.0.1/db?schema=Bad",
        "redis+sentinel://127.0.0.1/svc?sentinel_password=hunter2&bogus=1",
    ],
)
def test_an_error_about_a_store_url_never_repeats_its_password(tmp_path, url):
    with pytest.raises(ConfigError) as info:
        build_config({"store": {"url": url}, "routes": [ROUTE]}, tmp_path, env={})
    assert "store.url" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "written,kept",
    [
        ("crm.example.com", "crm.example.com"),
        ("CRM.Example.com.", "crm.example.com"),
        ("crm.example.com:8443", "crm.example.com:8443"),
        ("CRM.example.com.:08443", "crm.example.com:8443"),
    ],
)
def test_a_route_host_is_kept_in_one_spelling(tmp_path, written, kept):
    # the router matches requests on this spelling: `:08443` and `host.` are the same route
    route = {**ROUTE, "host": written}
    assert build_config({"routes": [route]}, tmp_path, env={}).routes[0].host == kept


@pytest.mark.parametrize("written", ["crm.example.com:0", "crm.example.com:65536", ".", ".:80"])
def test_a_route_host_with_no_name_or_an_impossible_port_is_refused(tmp_path, written):
    with pytest.raises(ConfigError) as info:
        build_config({"routes": [{**ROUTE, "host": written}]}, tmp_path, env={})
    assert "routes[0].host" in str(info.value)


def test_two_spellings_of_one_route_host_are_one_place(tmp_path):
    routes = [
        {**ROUTE, "host": "crm.example.com:8443"},
        {**ROUTE, "name": "b", "host": "crm.example.com.:08443"},
    ]
    with pytest.raises(ConfigError):
        build_config({"routes": routes}, tmp_path, env={})


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"identity": {"user_header": "X-User-Id\n"}}, "identity.user_header"),
        ({"session": {"cookie": "gw\n"}}, "session.cookie"),
        ({"routes": [{**ROUTE, "name": "site\n"}]}, "routes[0].name"),
        ({"routes": [{**ROUTE, "roles": ["admin\n"]}]}, "routes[0].roles"),
        ({"routes": [{**ROUTE, "host": "crm.example.com\n"}]}, "routes[0].host"),
    ],
    ids=["header", "cookie", "route name", "role", "host"],
)
def test_a_name_ending_in_a_line_break_is_refused(tmp_path, raw, field):
    # a pattern's `$` also matches before a final newline; a header name with one would split
    # the headers the upstream receives
    raw = {"routes": [dict(ROUTE)], **raw}
    with pytest.raises(ConfigError) as info:
        build_config(raw, tmp_path, env={})
    assert field in str(info.value)
