"""What every job spec shares: strict models, errors that name the field, the catalog to check methods against.

Scalars are strict: an int, float or bool field takes a JSON number or boolean, never a string ("3"), and a
bool is not a number (a float field takes an int). YAML spec files are read with :func:`load_yaml`, which
reads ``1e-3`` as a number as JSON does (PyYAML alone reads it as a string).

Errors name the field path, the value and what is allowed. Errors raised inside validators carry
``subloc`` (the path below the validated field) in their context so that the path points at the
offending key; :mod:`flatmtl.service.validation` appends it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from flatmtl.service.catalog import Catalog, load_catalog

MAX_DEPTH = 32
"""Nesting a document may have (a spec is about 6 deep): deeper ones cost the server recursion it may not have."""
MAX_ITEMS = 10_000
"""Entries of any one object or array of a document."""


def printable_text(text: str) -> str:
    """``text`` with lone surrogates escaped, safe to put into an error body."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"contains a lone surrogate (\\u{ord(text[error.start]):04x}), which is not Unicode text"
    return None


def check_document(data: Any) -> None:
    """Refuse what no database column can hold or no response can carry, wherever it is in a submitted document:
    strings (keys too) with a NUL or a lone surrogate, nesting deeper than MAX_DEPTH, more than MAX_ITEMS entries.

    Iterative, so that a document nested thousands deep is refused rather than exhausting the stack.
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = _text_problem(value)
            if problem:
                allowed = "Unicode text without NUL"
                raise field_error(problem, subloc=path, value=printable_text(value[:200]), allowed=allowed)
            continue
        if not isinstance(value, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            raise field_error(
                f"nested deeper than {MAX_DEPTH} levels", subloc=path, allowed=f"at most {MAX_DEPTH} levels of nesting"
            )
        if len(value) > MAX_ITEMS:
            raise field_error(
                f"has {len(value)} entries", subloc=path, allowed=f"at most {MAX_ITEMS} entries in an object or array"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _text_problem(key):
                    raise field_error(
                        f"key {_text_problem(key)}",
                        subloc=path,
                        value=printable_text(key[:200]),
                        allowed="Unicode text without NUL",
                    )
                stack.append(((*path, key), item))
        else:
            stack.extend(((*path, index), item) for index, item in enumerate(value))


JobName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


def context_catalog(info: ValidationInfo) -> Catalog:
    """The catalog from the validation context (tests pass their own), else the committed one."""
    context = info.context or {}
    return context.get("catalog") or load_catalog()


def field_error(message: str, *, subloc: tuple[str, ...] = (), value: Any = None, allowed: str = "") -> Exception:
    return PydanticCustomError(
        "spec_error", "{message}", {"message": message, "subloc": subloc, "value": value, "allowed": allowed}
    )


class SpecLoader(yaml.SafeLoader):
    """YAML 1.1 (PyYAML) floats need a dot, so ``1e-3`` would be the string "1e-3", which strict specs refuse;
    this loader reads exponent notation as a float, as JSON and YAML 1.2 do."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """A spec document from YAML or JSON text, numbers typed as JSON would type them."""
    return yaml.load(text, Loader=SpecLoader)


class SpecModel(BaseModel):
    """Strict about unknown keys, and says which keys exist when it refuses one; strict about scalar types, so a
    string is never silently turned into a number or a boolean."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = set(cls.model_fields)
            for key in data:
                if key not in fields:
                    allowed = ", ".join(sorted(fields))
                    raise field_error(
                        f"unknown field {key!r}; allowed: {allowed}", subloc=(str(key),), value=key, allowed=allowed
                    )
        return data
