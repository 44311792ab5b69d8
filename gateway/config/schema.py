"""`gateway schema`: a JSON Schema (draft 2020-12) of gateway.toml, generated from the model.

Tables and keys come from the dataclasses in gateway/config/model.py, starting at `Config`: a
field whose type is a dataclass is a table, a `tuple[<dataclass>, ...]` an array of tables
(`[[routes]]`), anything else a key; a key of pairs, `tuple[tuple[str, T], ...]`, is written as
a table of T (`role_map = { admins = "admin" }`). Types, `Literal` choices, defaults, docstrings
and the comments beside each field become the schema's `type`, `enum`, `default` and
`description`.

Which fields are TOML keys is asked of validation itself, not written down twice: one document
holding every field of the model goes through `validate_config`, and the fields it calls an
`unknown key` are derived ones (`server.host` and `server.port` come from `server.listen`;
`base_dir` from the file's place). A derived field that is a dataclass is tried once more with
its keys on the table above it (a route's identity headers sit on the route), and what
validation reports `missing` on empty tables is `required`. So a table or key added to the model
and to validation appears here without a change to this file.

What the types cannot tell (a header name, a route path, a `host:port`) is a short table of
patterns below, mirroring gateway/config/values.py; every other string is just a string. Any
string may hold `${ENV_VAR}` (loading replaces it), so a constrained string also accepts one.
Only keywords that mean the same in draft 4 and 2020-12 are used (no `$ref`, `const`,
`exclusiveMinimum` or `if`), so older TOML editors (Taplo says draft 4) read it the same way.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import ipaddress
import json
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from gateway.config import validate, values
from gateway.config.model import HTTP_METHODS, Config
from gateway.config.validate import ConfigError, validate_config

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# what loading replaces (gateway/config/load.py): a string holding one is checked after that
ENV_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*\}"

Part = str | int  # one step of a path into the document: a key, or index 0 of an array


def _ci(word: str) -> str:
    """A regex matching `word` in any ASCII case, without the (?i) flag JSON Schema lacks."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_HEADER = values._HEADER_NAME.pattern
# a route path segment that is neither "." nor "..", of bytes values.route_path allows
_BAD = r"/?#%\\\x00-\x20\x7f"
_SEG = rf"(?:[^.{_BAD}][^{_BAD}]*|\.[^.{_BAD}][^{_BAD}]*|\.\.[^{_BAD}]+)"
# 1-65535, leading zeros allowed (values.listen reads the digits with int())
_PORT = r"0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
_PORT += r"|6553[0-5])"
# urlsplit drops leading C0 controls and spaces, and lower-cases the scheme
_HTTP_URL = rf"^[\x00-\x20]*{_ci('http')}[sS]?://"
_LISTEN = 'Written "host:port", e.g. "127.0.0.1:8000".'
_OFF = 'A header name; "" = off.'
_METHOD = "^(?:" + "|".join(_ci(m) for m in sorted(HTTP_METHODS)) + ")$"
_ROLE = validate._ROLE.pattern
_ROLES = "Role names: letters, digits, '.', '_', ':' or '-'."
_CLAIM = validate._CLAIM.pattern
# validate._issuer: https, or plain http on this machine; no query, fragment or user info
_PATH_END = r"(?:/[^?#]*)?\??#?\s*$"
_ISSUER = (
    rf"^[\s\x00-\x20]*(?:{_ci('https')}://[^/?#@]+"
    rf"|{_ci('http')}://(?:{_ci('localhost')}|127\.0\.0\.1|\[::1\])(?::[^/?#@]*)?){_PATH_END}"
)
# validate._domains: a DNS name, lower-cased after blanks and a leading "@" are dropped
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"^\s*@*{_LABEL}(?:\.{_LABEL})*\s*$"

# Keys whose strings validation reads with a rule the type does not tell: the model's
# "Class.field" -> the string schema (an array's items, for a list; a table's values, for
# pairs). Looser than validation where a rule has no plain regex; a key left out is any string.
# On an int it sets the bounds (default: at least 1); on a float it makes a plain number of one
# (default: a duration). ARRAY_KEYWORDS in it (`contains`) go on the array, not its items.
REFINEMENTS: dict[str, dict[str, Any]] = {
    "ServerConfig.listen": {"pattern": rf"^[\s\S]+:{_PORT}$", "description": _LISTEN},
    "ServerConfig.admin_listen": {"pattern": rf"^[\s\S]+:{_PORT}$", "description": _LISTEN},
    "ServerConfig.public_url": {"pattern": _HTTP_URL, "description": "An http(s) URL."},
    "AuthConfig.prefix": {
        "pattern": r"^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$",
        "not": {"pattern": r"(^|/)\.\.(/|$)"},
        "description": 'An absolute path like "/.auth".',
    },
    "AuthConfig.htpasswd_roles": {"pattern": _ROLE, "description": _ROLES},
    "SqlUsersConfig.dsn": {"pattern": r"\S"},
    "SqlUsersConfig.query": {"pattern": r"\S"},
    "OidcConfig.name": {"pattern": validate._OIDC_NAME.pattern},
    "OidcConfig.issuer": {
        "pattern": _ISSUER,
        "description": "An https URL (plain http only on 127.0.0.1, localhost or [::1]).",
    },
    "OidcConfig.client_id": {"pattern": r"\S"},
    "OidcConfig.client_secret": {"pattern": r"\S"},
    "OidcConfig.scopes": {"contains": {"anyOf": [{"enum": ["openid"]}, {"pattern": ENV_PATTERN}]}},
    "OidcConfig.user_claim": {"pattern": _CLAIM, "description": "A claim name."},
    "OidcConfig.roles_claim": {"pattern": f"^$|{_CLAIM}"},
    "OidcConfig.role_map": {
        "pattern": _ROLE,
        "description": 'A table, e.g. { admins = "admin" }; our roles are role names.',
    },
    "OidcConfig.allowed_domains": {"pattern": _DOMAIN, "description": "Domain names."},
    "OidcConfig.allowed_roles": {"pattern": _ROLE, "description": _ROLES},
    "OidcConfig.id_prefix": {
        "pattern": f"^$|{validate._ID_PREFIX.pattern}",
        "not": {"pattern": "^service:$"},  # the service accounts' own
        "description": 'One per provider when there is more than one source; "" = none.',
    },
    "SessionConfig.cookie": {
        "pattern": values._COOKIE_NAME.pattern,
        "not": {"pattern": f"^(?:{_ci('__host-')}|{_ci('__secure-')})"},
        "description": "Letters, digits, - or _; the __Host- prefix is added when Secure.",
    },
    "IdentityConfig.user_header": {"pattern": _HEADER, "description": "A header name."},
    "IdentityConfig.roles_header": {"pattern": f"^$|{_HEADER}", "description": _OFF},
    "IdentityConfig.assertion_header": {"pattern": f"^$|{_HEADER}", "description": _OFF},
    "IdentityConfig.roles_header_limit": {"minimum": values.HEADER_LIMIT_MIN},  # header_limit
    "Route.name": {
        "pattern": values._ROUTE_NAME.pattern,
        "description": "Letters, digits, '.', '_' or '-'; the assertion's audience.",
    },
    "Route.path": {
        "pattern": rf"^/(?:{_SEG}(?:/{_SEG})*/?)?$",
        "description": "The path prefix matched on segment boundaries (/crm: /crm, /crm/x).",
    },
    "Route.upstream": {"pattern": _HTTP_URL, "description": "An http(s) URL."},
    "Route.host": {"pattern": r"^[A-Za-z0-9.-]+(:\d+)?$", "description": "A host name."},
    "Route.methods": {
        "enum": sorted(HTTP_METHODS),
        "pattern": _METHOD,
        "description": "Other methods get 405; GET brings HEAD.",
    },
    "Route.strip_headers": {"pattern": _HEADER, "description": "Header names."},
    "Route.access_token_header": {"pattern": _HEADER, "description": "A header name."},
}
# keywords of a refinement that say something of a whole array rather than of its items
ARRAY_KEYWORDS = frozenset({"contains", "minItems", "maxItems", "uniqueItems"})

DURATION_NOTE = 'A duration: "30s", "15m", "12h", "7d" (also "ms", "w"), or a number of seconds.'
# values.parse_duration's form, more than zero (values.positive_duration)
_NONZERO = r"(?:[0-9]*[1-9][0-9]*(?:\.[0-9]+)?|0+\.[0-9]*[1-9][0-9]*)"
_DURATION_TEXT = rf"^\s*{_NONZERO}\s*(?:ms|s|m|h|d|w)\s*$"


# -- the layout: which tables and keys a gateway.toml has --------------------------------


@dataclass(frozen=True)
class Key:
    """One key of gateway.toml and the model field it fills."""

    parts: tuple[Part, ...]  # where it sits: ("routes", 0, "timeout")
    owner: type  # the dataclass declaring the field
    field: dataclasses.Field[Any]
    hint: Any  # the field's type, resolved
    required: bool = False
    via: str | None = None  # the owner's table is flattened into its parent through this field

    @property
    def name(self) -> str:
        """The key as written in TOML (the field's name)."""
        return self.field.name

    @property
    def path(self) -> str:
        """The key as validation's errors name it: `routes[0].timeout`."""
        return dotted(self.parts)

    @property
    def ref(self) -> str:
        """The model field: `Route.timeout`."""
        return f"{self.owner.__name__}.{self.field.name}"


@dataclass(frozen=True)
class Table:
    """A table of gateway.toml (one entry of an array of tables, when `array`)."""

    parts: tuple[Part, ...]  # the table's own place: () for the top, ("routes", 0)
    model: type
    field: dataclasses.Field[Any] | None  # the parent's field holding it; None at the top
    array: bool = False
    required: bool = False
    min_items: int = 0
    entries: tuple[Key | Table, ...] = ()

    @property
    def path(self) -> str:
        """The table as validation's errors name it: `auth.sql`, `routes[0]`."""
        return dotted(self.parts)

    @property
    def name(self) -> str:
        """Its key in the parent table ("" for the top)."""
        return self.field.name if self.field else ""

    @property
    def key_parts(self) -> tuple[Part, ...]:
        """Where its key sits in the parent: `routes`, not `routes[0]`."""
        return self.parts[:-1] if self.array else self.parts


@dataclass(frozen=True)
class Layout:
    """Every table and key of gateway.toml, and the model fields that are not keys."""

    root: Table
    derived: frozenset[str]  # "ServerConfig.host": filled by validation, never written

    def tables(self) -> Iterator[Table]:
        """Every table, the top one first."""
        return _all_tables(self.root)

    def keys(self) -> Iterator[Key]:
        """Every key, in model order."""
        for table in self.tables():
            for entry in table.entries:
                if isinstance(entry, Key):
                    yield entry


def dotted(parts: tuple[Part, ...]) -> str:
    """A path as validation spells it: `("routes", 0, "timeout")` is `routes[0].timeout`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model)


def _nested(hint: Any) -> tuple[type, bool] | None:
    """The dataclass a field's type makes a table of, and whether an array of them."""
    if isinstance(hint, type) and is_dataclass(hint):
        return hint, False
    args = get_args(hint)
    if get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(args[0], type) and is_dataclass(args[0]):
            return args[0], True
    return None


def _default(spec: dataclasses.Field[Any]) -> Any:
    """The model's default for a field, or MISSING."""
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return MISSING


def pairs_of(hint: Any) -> Any:
    """T of a `tuple[tuple[str, T], ...]`, a table the model holds as pairs; else None."""
    args = get_args(hint)
    if get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        pair = get_args(args[0])
        if get_origin(args[0]) is tuple and len(pair) == 2 and pair[0] is str:
            return pair[1]
    return None


def toml_value(value: Any, hint: Any = None) -> Any:
    """A model value as TOML would hold it (Path and tuple as string and array), or None.

    With the model type `hint`, pairs (see `pairs_of`) become the table they are written as.
    """
    if pairs_of(hint) is not None and isinstance(value, tuple | list):
        return {str(name): toml_value(item) for name, item in value}
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple | list):
        return [toml_value(item) for item in value]
    if isinstance(value, frozenset | set):
        return sorted(toml_value(item) for item in value)
    return None


def _sample(model: type) -> dict[str, Any]:
    """A document with every field of `model` as a key, tables within tables, as TOML holds them."""
    hints = _hints(model)
    doc: dict[str, Any] = {}
    for spec in fields(model):
        nested = _nested(hints[spec.name])
        if nested:
            table = _sample(nested[0])
            doc[spec.name] = [table] if nested[1] else table
        else:
            value = toml_value(_default(spec), hints[spec.name])
            doc[spec.name] = "" if value is None else value
    return doc


def _errors(doc: dict[str, Any]) -> list[str]:
    """What validation says about a document (the middleware's reading: upstream optional)."""
    try:
        validate_config(doc, Path("/"), None, None, require_upstream=False)
    except ConfigError as exc:
        return exc.errors
    return []


def _reported(errors: list[str], what: str) -> set[str]:
    """The field paths of errors like `routes[0].identity: unknown key` (`what` = "unknown key")."""
    pattern = re.compile(rf"^(.*?): {re.escape(what)}(?:;|$)")
    return {m.group(1) for m in map(pattern.match, errors) if m}


def _node(doc: Any, parts: tuple[Part, ...]) -> Any:
    for part in parts:
        doc = doc[part]
    return doc


@functools.cache
def layout() -> Layout:
    """Walk the model from `Config`, keeping what validation reads as keys (see the module doc)."""
    doc = _sample(Config)
    unknown = _reported(_errors(doc), "unknown key")
    derived: set[str] = set()
    # derived tables whose fields might sit on the table above: (parent parts, field, model)
    flatten: list[tuple[tuple[Part, ...], dataclasses.Field[Any], type]] = []

    def walk(model: type, parts: tuple[Part, ...]) -> list[Key | Table]:
        entries: list[Key | Table] = []
        hints = _hints(model)
        for spec in fields(model):
            where = (*parts, spec.name)
            nested = _nested(hints[spec.name])
            if dotted(where) in unknown:
                derived.add(f"{model.__name__}.{spec.name}")
                if nested and not nested[1]:
                    flatten.append((parts, spec, nested[0]))
            elif nested:
                sub, array = nested
                at = (*where, 0) if array else where
                entries.append(Table(at, sub, spec, array, entries=tuple(walk(sub, at))))
            else:
                entries.append(Key(where, model, spec, hints[spec.name]))
        return entries

    root = Table((), Config, None, entries=tuple(walk(Config, ())))
    root = _flattened(root, doc, flatten, derived)
    root = _required(root)
    return Layout(root, frozenset(derived))


def _flattened(
    root: Table,
    doc: dict[str, Any],
    flatten: list[tuple[tuple[Part, ...], dataclasses.Field[Any], type]],
    derived: set[str],
) -> Table:
    """Try each derived table's fields on the table above; keep those validation reads there."""
    if not flatten:
        return root
    candidates: dict[tuple[Part, ...], list[Key]] = {}
    for parts, spec, model in flatten:
        parent = _node(doc, parts)
        parent.pop(spec.name, None)
        hints = _hints(model)
        for sub in fields(model):
            if sub.name in parent or _nested(hints[sub.name]):
                continue
            value = toml_value(_default(sub), hints[sub.name])
            parent[sub.name] = "" if value is None else value
            key = Key((*parts, sub.name), model, sub, hints[sub.name], via=spec.name)
            candidates.setdefault(parts, []).append(key)
    unknown = _reported(_errors(doc), "unknown key")
    for keys in candidates.values():
        for key in keys:
            if key.path in unknown:
                derived.add(key.ref)
    accepted = {
        parts: [k for k in keys if k.path not in unknown] for parts, keys in candidates.items()
    }

    def rebuild(table: Table) -> Table:
        entries = [rebuild(e) if isinstance(e, Table) else e for e in table.entries]
        entries += accepted.get(table.parts, [])
        return dataclasses.replace(table, entries=tuple(entries))

    return rebuild(root)


_LEAVE_OUT: Any = object()


def _empty(table: Table, at: tuple[Part, ...] | None = None, value: Any = _LEAVE_OUT) -> Any:
    """A document of empty tables (arrays of one), with the table key at `at` set to `value`."""
    doc: dict[str, Any] = {}
    for entry in table.entries:
        if not isinstance(entry, Table):
            continue
        if entry.key_parts == at:
            if value is not _LEAVE_OUT:
                doc[entry.name] = value
            continue
        inner = _empty(entry, at, value)
        doc[entry.name] = [inner] if entry.array else inner
    return doc


def _required(root: Table) -> Table:
    """Mark what validation reports `missing` when absent, and arrays it wants non-empty."""
    missing = _reported(_errors(_empty(root)), "missing")
    tables = {}
    for table in _all_tables(root):
        if table.field is None:
            continue
        gone = _reported(_errors(_empty(root, table.key_parts)), "missing")
        min_items = 0
        if table.array:
            errors = _errors(_empty(root, table.key_parts, []))
            min_items = int(any(e.startswith(f"{dotted(table.key_parts)}:") for e in errors))
        tables[table.parts] = (dotted(table.key_parts) in gone, min_items)

    def rebuild(table: Table) -> Table:
        entries: list[Key | Table] = []
        for entry in table.entries:
            if isinstance(entry, Table):
                entries.append(rebuild(entry))
            elif entry.via is None and entry.path in missing:
                entries.append(dataclasses.replace(entry, required=True))
            else:
                entries.append(entry)
        required, min_items = tables.get(table.parts, (False, 0))
        return dataclasses.replace(
            table, entries=tuple(entries), required=required, min_items=min_items
        )

    return rebuild(root)


def _all_tables(table: Table) -> Iterator[Table]:
    """A table and every table within it, depth first."""
    yield table
    for entry in table.entries:
        if isinstance(entry, Table):
            yield from _all_tables(entry)


# -- descriptions: docstrings and the comments beside each field -------------------------


@functools.cache
def field_comments(model: type) -> dict[str, str]:
    """The comments on each field of a dataclass: the lines just above, then the one after it."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, on a line of its own)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not lines[tok.start[0] - 1][: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
    out: dict[str, str] = {}
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        after = [
            text
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if n in comments and not comments[n][1]
            for text in [comments[n][0]]
        ]
        text = "; ".join(above + after)
        if text:
            out[node.target.id] = text
    return out


def _sentence(text: str) -> str:
    """A comment as a sentence: capitalised, with a full stop."""
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _doc(model: type) -> str:
    """A dataclass's docstring, its first paragraph on one line."""
    doc = inspect.getdoc(model) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


# -- the schema -------------------------------------------------------------------------


def _is_duration(hint: Any, refine: dict[str, Any] | None = None) -> bool:
    """A float in the model is a duration (values.positive_duration), unless refined as a number."""
    return hint is float and not refine


def _string(refine: dict[str, Any] | None, nonempty: bool = False) -> dict[str, Any]:
    """A string schema, with its refinement and the `${ENV}` it may hold instead."""
    out: dict[str, Any] = {"type": "string"}
    if nonempty:
        out["minLength"] = 1
    if not refine:
        return out
    refine = dict(refine)
    choices = refine.pop("enum", None)
    out.update(refine)
    if "pattern" in out:
        out["pattern"] = f"(?:{out['pattern']})|{ENV_PATTERN}"
    if choices:  # listed for completion; the pattern decides what is accepted
        return {"anyOf": [{"type": "string", "enum": choices}, out]}
    return out


def _choices(choices: tuple[Any, ...]) -> dict[str, Any]:
    """A `Literal`'s values, or a `${ENV}` that becomes one."""
    return {"anyOf": [{"enum": list(choices)}, {"type": "string", "pattern": ENV_PATTERN}]}


def value_schema(hint: Any, refine: dict[str, Any] | None = None, item: bool = False) -> Any:
    """The schema of a value of the model type `hint` (an array's items when `item`)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", "minimum": 1, **(refine or {})}  # values.positive_int
    if hint is float and refine:
        return {"type": "number", **refine}  # a plain number, within the refinement's bounds
    if _is_duration(hint):
        return {
            "anyOf": [
                {"type": "number", "minimum": 0, "not": {"enum": [0]}},
                {"type": "string", "pattern": f"(?:{_DURATION_TEXT})|{ENV_PATTERN}"},
            ]
        }
    if hint is str:
        return _string(refine, nonempty=item)  # values.string_list: no "" in a list
    if hint is Path:
        return _string(refine or {"pattern": r"\S"})  # values.file_path: not empty
    if hint in (ipaddress.IPv4Network, ipaddress.IPv6Network):
        return _string(refine, nonempty=True)
    if origin is Literal:
        return _choices(args)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if type(None) in args and Path in members:
            members = [str if m is Path else m for m in members]  # "" = unset
        if len(members) == 1:
            return value_schema(members[0], refine, item)
        if all(m in (ipaddress.IPv4Network, ipaddress.IPv6Network) for m in members):
            return _string(refine, nonempty=True)
        branches: list[Any] = []
        for member in members:
            schema = value_schema(member, refine, item)
            branches.extend(schema["anyOf"] if list(schema) == ["anyOf"] else [schema])
        return {"anyOf": branches}
    if pairs_of(hint) is not None:  # a table of names to values; the refinement: the values'
        return {"type": "object", "additionalProperties": value_schema(pairs_of(hint), refine)}
    if origin in (tuple, frozenset, list, set) and args:
        outer = {k: v for k, v in (refine or {}).items() if k in ARRAY_KEYWORDS}
        inner = {k: v for k, v in (refine or {}).items() if k not in ARRAY_KEYWORDS}
        return {"type": "array", "items": value_schema(args[0], inner, item=True), **outer}
    raise TypeError(f"gateway schema: no JSON Schema for the model type {hint!r}")


def _fits(schema: dict[str, Any], value: Any) -> bool:
    """Whether a default passes a string schema's patterns: a default "" may be unwritable."""
    if not isinstance(value, str):
        return True
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    refused = schema.get("not", {}).get("pattern")
    return not (refused and re.search(refused, value))


def default_text(hint: Any, value: Any, duration: bool = True) -> Any:
    """A model default as an operator writes it: durations as "15m", paths as strings."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if duration and _is_duration(hint) and number:
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if value >= seconds and value % seconds == 0:
                return f"{int(value // seconds)}{unit}"
        if (value * 1000) == int(value * 1000):
            return f"{int(value * 1000)}ms"
        return value
    return toml_value(value, hint)


def _key_schema(key: Key, parent_comment: str) -> dict[str, Any]:
    refine = dict(REFINEMENTS.get(key.ref, {}))
    note = refine.pop("description", "")
    schema = dict(value_schema(key.hint, refine))
    notes = [field_comments(key.owner).get(key.name, ""), note]
    if key.via is not None:
        notes = [notes[0] or _doc(key.owner), note, parent_comment]
    duration = _is_duration(key.hint, refine)
    if duration:
        notes.append(DURATION_NOTE)
    is_path = key.hint is Path or Path in get_args(key.hint)
    if is_path and "relative" not in notes[0].lower():
        notes.append("Relative to the config file's folder.")
    description = " ".join(_sentence(n) for n in notes if n)
    out: dict[str, Any] = {"description": description} if description else {}
    out.update(schema)
    default = _default(key.field)
    if key.via is None and default is not MISSING:
        text = default_text(key.hint, default, duration)
        if text is not None and _fits(schema, text):
            out["default"] = text
    return out


def _table_schema(table: Table) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    comments = field_comments(table.model)
    for entry in table.entries:
        if isinstance(entry, Key):
            via = comments.get(entry.via, "") if entry.via else ""
            properties[entry.name] = _key_schema(entry, via)
            if entry.required:
                required.append(entry.name)
        else:
            name = entry.name
            inner = _table_schema(entry)
            note = comments.get(name)
            if note:
                inner["description"] = f"{inner.get('description', '')} {_sentence(note)}".strip()
            if entry.array:
                array: dict[str, Any] = {"type": "array"}
                if "description" in inner:  # said once, on the array
                    array["description"] = inner.pop("description")
                if entry.min_items:
                    array["minItems"] = entry.min_items
                array["items"] = inner
                properties[name] = array
            else:
                properties[name] = inner
            if entry.required:
                required.append(name)
    out: dict[str, Any] = {}
    if _doc(table.model):
        out["description"] = _doc(table.model)
    out["type"] = "object"
    out["properties"] = properties
    out["additionalProperties"] = False  # validation: `unknown key`
    if required:
        out["required"] = required
    # Taplo fills these in when it completes the table: keys without a model default
    init = [
        e.name
        for e in table.entries
        if isinstance(e, Key) and e.via is None and _default(e.field) is MISSING
    ]
    if init:
        out["x-taplo"] = {"initKeys": init}
    return out


@functools.cache
def _cached_schema() -> str:
    body = _table_schema(layout().root)
    body.pop("description", None)
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$comment": "Generated by `gateway schema` from gateway/config/model.py; do not edit.",
        "title": "gateway.toml",
        "description": (
            "The config of the gateway, an authenticating reverse proxy. "
            "Any string may use ${ENV_VAR}; `gateway check` validates the file."
        ),
        **body,
    }
    return json.dumps(schema, indent=2, ensure_ascii=False)


def build_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.toml, as a fresh dict."""
    return json.loads(_cached_schema())


def schema_json() -> str:
    """The JSON Schema of gateway.toml as `gateway schema` prints it (ends with a newline)."""
    return _cached_schema() + "\n"
