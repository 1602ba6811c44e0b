"""Asterisk's own ARI definitions (Swagger 1.2) as the simulator's router and argument parser.

res_ari routes a request the way this module does: the path below `/ari` is walked segment by segment
through a tree built from the api-docs paths (a literal segment beats a `{wildcard}`); no node → 404
"Resource not found"; a node without a handler for the method → 405 "Invalid method" with
`Allow: OPTIONS,<methods>` (methods in Asterisk's enum order GET, POST, HEAD, PUT, DELETE).

Arguments are parsed like Asterisk's generated `ast_ari_*_cb` code: every known query parameter is
read (`allowMultiple` ones split on commas, repeats accumulate, `int` via atoi, `boolean` via
ast_true); a JSON object body supplies parameters too and wins over the query; a form-encoded body
is merged into the query. Unknown query parameters are ignored — the generated code has an empty
`else {}` for them — so the simulator accepts them and records their names (`Arguments.ignored`).
Required parameters and allowed values are NOT checked here: Asterisk checks them in each resource
implementation, in its own order and with its own messages (see rest.py), which a generic check
would get wrong (e.g. play without media on an unknown channel is 404, not 500).

The definitions come from the api-docs directory when there is one (`../shared/ari/api-docs`), else
from `api_docs.json` next to this module: a trimmed copy generated once by `vendor_api_docs()` and
kept as data, so the simulator runs without `../shared`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_API_DOCS = REPO_ROOT.parent / "shared" / "ari" / "api-docs"
VENDORED_API_DOCS = Path(__file__).with_name("api_docs.json")
# ast_http_method order; res_ari's add_allow_header() lists a node's methods in it after OPTIONS.
METHOD_ORDER = ("GET", "POST", "HEAD", "PUT", "DELETE")
# ast_true(): what Asterisk's generated code accepts as a true boolean parameter.
TRUE_WORDS = frozenset({"yes", "true", "y", "t", "1", "on"})


class AriError(Exception):
    """A request Asterisk answers with an error: status, reason phrase and `{"message": ...}` body."""

    def __init__(self, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    param_type: str  # "path", "query" or "body"
    required: bool
    allow_multiple: bool
    data_type: str  # "string", "int", "long", "boolean", "containers", "object"
    allowed_values: tuple[str, ...] | None

    def to_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": self.name,
            "paramType": self.param_type,
            "required": self.required,
            "allowMultiple": self.allow_multiple,
            "dataType": self.data_type,
        }
        if self.allowed_values is not None:
            spec["allowedValues"] = list(self.allowed_values)
        return spec

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> ParamSpec:
        """Reads both Swagger's own form (`allowableValues`) and the vendored one (`allowedValues`)."""
        allowed = spec.get("allowedValues")
        if allowed is None and isinstance(spec.get("allowableValues"), Mapping):
            allowed = spec["allowableValues"].get("values")
        return cls(
            name=str(spec["name"]),
            param_type=str(spec["paramType"]),
            required=bool(spec.get("required", False)),
            allow_multiple=bool(spec.get("allowMultiple", False)),
            data_type=str(spec.get("dataType", "string")),
            allowed_values=tuple(str(v) for v in allowed) if allowed is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """One REST operation; `key` is "<resource>.<nickname>" since nicknames repeat across resources."""

    resource: str
    nickname: str
    method: str
    path: str
    params: tuple[ParamSpec, ...]
    websocket: bool = False

    @property
    def key(self) -> str:
        return f"{self.resource}.{self.nickname}"

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)


@dataclass(slots=True)
class RouteNode:
    segment: str
    literals: dict[str, RouteNode] = field(default_factory=dict)
    wildcard: RouteNode | None = None
    wildcard_name: str = ""
    operations: dict[str, Operation] = field(default_factory=dict)

    def allow_header(self) -> str:
        return ",".join(["OPTIONS", *(m for m in METHOD_ORDER if m in self.operations)])


@dataclass(frozen=True, slots=True)
class RouteMatch:
    node: RouteNode
    operation: Operation | None  # None for OPTIONS
    path_params: dict[str, str]


@dataclass(slots=True)
class Arguments:
    """Parsed parameters of one request, with typed accessors that follow Asterisk's conversions."""

    values: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    body: Any = None

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def texts(self, name: str) -> list[str]:
        value = self.values.get(name)
        return list(value) if isinstance(value, list) else []

    def integer(self, name: str, default: int = 0) -> int:
        value = self.values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.values.get(name)
        return value if isinstance(value, bool) else default


class ApiDocs:
    """The route tree and operations of one set of ARI definitions."""

    def __init__(self, operations: Iterable[Operation], origin: str) -> None:
        self.operations = tuple(operations)
        self.origin = origin
        self.root = RouteNode("")
        for operation in self.operations:
            self._insert(operation)

    @classmethod
    def load(cls, source: Path | None = None) -> ApiDocs:
        """From `source` (an api-docs directory or a vendored file), else ../shared, else the vendored copy."""
        if source is None:
            source = SHARED_API_DOCS if SHARED_API_DOCS.is_dir() else VENDORED_API_DOCS
        if source.is_dir():
            return cls(read_swagger_dir(source), origin=str(source))
        document = json.loads(source.read_text())
        operations = [
            Operation(
                resource=op["resource"],
                nickname=op["nickname"],
                method=op["method"],
                path=op["path"],
                params=tuple(ParamSpec.from_json(p) for p in op.get("parameters", ())),
                websocket=bool(op.get("websocket", False)),
            )
            for op in document["operations"]
        ]
        return cls(operations, origin=str(source))

    def _insert(self, operation: Operation) -> None:
        node = self.root
        for segment in _segments(operation.path):
            if segment.startswith("{") and segment.endswith("}"):
                if node.wildcard is None:
                    node.wildcard = RouteNode(segment)
                    node.wildcard_name = segment[1:-1]
                node = node.wildcard
            else:
                node = node.literals.setdefault(segment, RouteNode(segment))
        node.operations[operation.method] = operation

    def route(self, method: str, raw_path: str) -> RouteMatch:
        """Finds the operation for `raw_path` (the percent-encoded path below /ari) or raises 404/405."""
        node = self.root
        path_params: dict[str, str] = {}
        for raw_segment in _segments(raw_path):
            segment = unquote(raw_segment)
            literal = node.literals.get(segment)
            if literal is not None:
                node = literal
            elif node.wildcard is not None:
                path_params[node.wildcard_name] = segment
                node = node.wildcard
            else:
                raise AriError(404, "Not Found", "Resource not found")
        if method == "OPTIONS":
            return RouteMatch(node, None, path_params)
        operation = node.operations.get(method)
        if operation is None:
            raise AriError(405, "Method Not Allowed", "Invalid method", {"Allow": node.allow_header()})
        return RouteMatch(node, operation, path_params)


def _segments(path: str) -> list[str]:
    # res_ari stops at the first empty segment, so "/channels/" routes like "/channels".
    segments: list[str] = []
    for segment in path.strip("/").split("/"):
        if not segment:
            break
        segments.append(segment)
    return segments


def read_swagger_dir(directory: Path) -> list[Operation]:
    """Every operation of every resource file in an Asterisk api-docs directory (resources.json excluded)."""
    operations: list[Operation] = []
    for resource_file in sorted(directory.glob("*.json")):
        document = json.loads(resource_file.read_text())
        if "apis" not in document:
            continue
        resource = resource_file.stem
        for api in document["apis"]:
            for op in api.get("operations", ()):
                operations.append(
                    Operation(
                        resource=resource,
                        nickname=str(op["nickname"]),
                        method=str(op["httpMethod"]).upper(),
                        path=str(api["path"]),
                        params=tuple(ParamSpec.from_json(p) for p in op.get("parameters", ())),
                        websocket=op.get("upgrade") == "websocket",
                    )
                )
    return operations


def parse_arguments(
    operation: Operation,
    query: Iterable[tuple[str, str]],
    path_params: Mapping[str, str],
    body: Any,
) -> Arguments:
    """Reads the operation's parameters from the query pairs, path and body as Asterisk's generated code does."""
    args = Arguments(body=body)
    for name, raw in query:
        spec = operation.param(name)
        if spec is None or spec.param_type == "path":
            if name != "api_key" and name not in args.ignored:
                args.ignored.append(name)
            continue
        _store(args, spec, raw)
    if isinstance(body, Mapping):
        for spec in operation.params:
            if spec.param_type == "query" and spec.name in body:
                _store_json(args, spec, body[spec.name])
    for name, value in path_params.items():
        args.values[name] = value
    return args


def _store(args: Arguments, spec: ParamSpec, raw: str) -> None:
    if spec.allow_multiple:
        # A repeated parameter accumulates; one value may itself be a comma separated list.
        current = args.values.setdefault(spec.name, [])
        current.extend(item for item in raw.split(",") if item)
    else:
        args.values[spec.name] = _convert(spec, raw)


def _store_json(args: Arguments, spec: ParamSpec, value: Any) -> None:
    if spec.allow_multiple:
        items = value if isinstance(value, list) else [value]
        args.values[spec.name] = [str(item) for item in items if str(item)]
    elif _has_native_type(spec, value):
        args.values[spec.name] = value
    else:
        args.values[spec.name] = _convert(spec, str(value))


def _has_native_type(spec: ParamSpec, value: Any) -> bool:
    """A JSON boolean for a boolean parameter, a JSON integer for an int one: taken as they are."""
    if spec.data_type == "boolean":
        return isinstance(value, bool)
    return spec.data_type in ("int", "long") and isinstance(value, int) and not isinstance(value, bool)


def _convert(spec: ParamSpec, raw: str) -> Any:
    if spec.data_type in ("int", "long"):
        return _atoi(raw)
    if spec.data_type == "boolean":
        return raw.strip().lower() in TRUE_WORDS
    return raw


def _atoi(raw: str) -> int:
    """C atoi(): leading whitespace, optional sign, digits; anything else ends the number (or gives 0)."""
    text = raw.lstrip()
    sign = -1 if text.startswith("-") else 1
    if text[:1] in "+-":
        text = text[1:]
    digits = ""
    for char in text:
        if not char.isdigit():
            break
        digits += char
    return sign * int(digits) if digits else 0


def vendor_api_docs(source_dir: Path, implemented: Collection[str]) -> dict[str, Any]:
    """The trimmed, script-free copy kept as api_docs.json: full parameters of the implemented operations,
    path and method only of the others (so 404/405 and Allow stay exactly Asterisk's)."""
    api_version = json.loads((source_dir / "channels.json").read_text()).get("apiVersion", "")
    operations = read_swagger_dir(source_dir)
    return {
        "_origin": (
            f"Trimmed from Asterisk 22.10.1's ARI api-docs (Swagger 1.2, apiVersion {api_version}) in "
            "../shared/ari/api-docs by rtcore.sim.ari.swagger.vendor_api_docs(); data, regenerate rather than edit. "
            "'parameters' are listed for the operations the simulator implements; the others keep path and "
            "method so that routing (404, 405 and Allow) matches Asterisk, and answer 501."
        ),
        "swaggerVersion": "1.2",
        "apiVersion": api_version,
        "operations": [
            {
                "resource": op.resource,
                "nickname": op.nickname,
                "method": op.method,
                "path": op.path,
                **({"websocket": True} if op.websocket else {}),
                **(
                    {"parameters": [p.to_json() for p in op.params]}
                    if op.key in implemented
                    else {}
                ),
            }
            for op in operations
        ],
    }
