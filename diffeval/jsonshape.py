"""The part of JSON Schema that results.schema.json uses, checked without a dependency: the
report commands read run folders written by anyone and must refuse a wrong shape with the
place that is wrong (`metrics.transformer.acc.value: expected number, got 'abc'`), not fail
later with a KeyError.

Supported keywords: type, const, enum, required, properties, additionalProperties,
propertyNames, items, prefixItems, minItems, maxItems, minimum, minLength, pattern, oneOf,
$ref (local). Numbers must be finite."""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from diffeval.errors import shown

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def first_error(value: Any, schema: dict, root: Optional[dict] = None, where: str = "") -> Optional[str]:
    """The first place where `value` does not fit `schema`, as 'path: what is wrong', or None."""
    root = schema if root is None else root
    here = where or "(top level)"
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return first_error(value, target, root, where)
    if "oneOf" in schema:
        if not any(first_error(value, s, root, where) is None for s in schema["oneOf"]):
            return f"{here}: unexpected value {shown(value)}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[k](value) for k in kinds):
            return f"{here}: expected {' or '.join(kinds)}, got {shown(value)}"
    if "const" in schema and value != schema["const"]:
        return f"{here}: expected {schema['const']!r}, got {shown(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{here}: {shown(value)} is not one of {', '.join(map(repr, schema['enum']))}"
    if isinstance(value, dict):
        return _object_error(value, schema, root, where)
    if isinstance(value, list):
        return _array_error(value, schema, root, where)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{here}: empty"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{here}: {shown(value)} does not match {schema['pattern']}"
    elif _TYPES["number"](value) and "minimum" in schema and value < schema["minimum"]:
        return f"{here}: {value!r} is below {schema['minimum']}"
    return None


def _object_error(value: dict, schema: dict, root: dict, where: str) -> Optional[str]:
    prefix = f"{where}." if where else ""
    for key in schema.get("required", ()):
        if key not in value:
            return f"{where or '(top level)'}: missing key {key!r}"
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    names = schema.get("propertyNames")
    for key, item in value.items():
        if names is not None and (err := first_error(key, names, root, f"{prefix}{key}")):
            return err
        if key in props:
            sub = props[key]
        elif extra is False:
            return f"{prefix}{key}: unknown key"
        elif isinstance(extra, dict):
            sub = extra
        else:
            continue
        if (err := first_error(item, sub, root, f"{prefix}{key}")) is not None:
            return err
    return None


def _array_error(value: list, schema: dict, root: dict, where: str) -> Optional[str]:
    here = where or "(top level)"
    if len(value) < schema.get("minItems", 0):
        return f"{here}: expected at least {schema['minItems']} item(s), got {len(value)}"
    if len(value) > schema.get("maxItems", len(value)):
        return f"{here}: expected at most {schema['maxItems']} item(s), got {len(value)}"
    prefix = schema.get("prefixItems", [])
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else schema.get("items")
        if sub is not None and (err := first_error(item, sub, root, f"{here}[{i}]")) is not None:
            return err
    return None
