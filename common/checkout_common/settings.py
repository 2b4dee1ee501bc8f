"""How a process's settings are read from the environment: one set of rules for the server,
the relay and the runner, so one environment means the same to each.

- A settings class (`EnvSettings`) reads the environment only in `from_env`; built in code it
  never does. Every field reads the variable named after it, upper-cased (`mongo_uri` <-
  MONGO_URI); the value is stripped, and an unset or blank variable keeps the default,
  unless the field is marked `EnvRule.KEEP_EMPTY` (set but empty is then a value).
- A `Secret` field may come from the file named by `<NAME>_FILE` (Docker/Kubernetes secrets),
  which wins over the plain variable; its value is never shown (repr, error messages).
- A `Flag` is 1/true/yes/on or 0/false/no/off (any case); anything else is refused, never
  taken for false: a typo in MINIO_SECURE must not turn TLS off.
- `Names` is a comma-separated list of names.
- Every invalid value raises the class's `config_error` (each process's ConfigError), one for
  all that is wrong, each problem naming its variable. A validator of the class reports a
  problem by raising ValueError with a message that names the variable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(ValueError):
    """A setting is missing or malformed (at start-up); the message names the variable. The
    default `config_error`; the processes raise their own (a subclass of their errors)."""


class EnvRule(enum.Enum):
    """How a field reads its variable, beyond the usual (annotation metadata)."""

    SECRET = "may come from the file named by <NAME>_FILE, which wins"
    KEEP_EMPTY = "set but empty is a value, not the default"


TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def parse_flag(value: object) -> object:
    """A flag's text as a bool; anything but TRUE or FALSE (any case, spaces around) is
    refused. Non-text passes through for pydantic's own bool rules (code passing True)."""
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise PydanticCustomError("bool_parsing", "must be true or false")


def parse_names(value: object) -> object:
    """A comma-separated list of names as a set; blanks between commas are dropped."""
    if isinstance(value, str):
        return frozenset(name.strip() for name in value.split(",") if name.strip())
    return value


# What placeholders put where a secret goes (example files, copied snippets): a process given
# one was configured from an example as it is, so it stops rather than run with a password
# everyone can read. (Compose's secrets are made by tools/make_compose_secrets.py.)
PLACEHOLDER = "change-me"


def refuse_placeholder(value: str) -> str:
    """A secret's value, unless it holds a placeholder (also inside a URI)."""
    if PLACEHOLDER in value:
        raise PydanticCustomError(
            "placeholder_secret",
            "holds a placeholder ({placeholder}...), as example files do: set a secret of your own",
            {"placeholder": PLACEHOLDER},
        )
    return value


Secret = Annotated[str, Field(repr=False), EnvRule.SECRET, AfterValidator(refuse_placeholder)]
Flag = Annotated[bool, BeforeValidator(parse_flag)]
Names = Annotated[frozenset[str], BeforeValidator(parse_names)]


class EnvSettings(BaseSettings):
    """The base of every process's settings: reading the environment (`from_env`, the only
    way they do), validated copies (`replace`) and `config_error` for invalid values."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    # What an invalid value raises (called with the message).
    config_error: ClassVar[type[Exception]] = ConfigError

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # only what the code passes: never os.environ

    if not TYPE_CHECKING:  # keeps the typed __init__ that type checkers derive from the fields

        def __init__(self, **values: Any) -> None:
            try:
                super().__init__(**values)
            except ValidationError as exc:
                cls = type(self)
                raise cls.config_error(describe(exc, cls.model_fields)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Settings from environment variables (default: os.environ); unset ones keep their
        defaults."""
        source = EnvironmentSource(cls, os.environ if env is None else env, cls.config_error)
        return cls(**source())

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes`, validated again."""
        return type(self)(**{**dict(self), **changes})


class EnvironmentSource(PydanticBaseSettingsSource):
    """The values of a settings class's fields in `env`: each field reads the variable named
    after it, upper-cased and stripped; unset or blank keeps the default (unless the field is
    marked KEEP_EMPTY); a SECRET field reads the file named by `<NAME>_FILE` first."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: Mapping[str, str],
        config_error: type[Exception] = ConfigError,
    ) -> None:
        super().__init__(settings_cls)
        self.env = env
        self.config_error = config_error

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = field_name.upper()
        path = self.env.get(f"{name}_FILE", "").strip()
        if path and EnvRule.SECRET in field.metadata:
            try:
                return Path(path).read_text(encoding="utf-8").strip(), field_name, False
            except OSError as exc:
                raise self.config_error(f"{name}_FILE: cannot read {path}: {exc}") from exc
        value = self.env.get(name, "").strip()
        if value or (name in self.env and EnvRule.KEEP_EMPTY in field.metadata):
            return value, field_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


_EXPECTED = {
    "int": "must be an integer",
    "float": "must be a number",
    "bool": "must be true or false",
}


def describe(exc: ValidationError, fields: Mapping[str, FieldInfo]) -> str:
    """All that is wrong, each problem naming its variable; a secret's value is never shown."""
    problems = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if error["type"] == "value_error" and isinstance(cause, ValueError):
            problems.append(str(cause))  # raised by a validator: its message names the variable
            continue
        field = str(error["loc"][0]) if error["loc"] else ""
        expected = _EXPECTED.get(error["type"].split("_", 1)[0])
        if expected is None:
            problems.append(f"{field.upper()}: {error['msg']}")
        elif field in fields and EnvRule.SECRET in fields[field].metadata:
            problems.append(f"{field.upper()} {expected}")
        else:
            problems.append(f"{field.upper()} {expected}, got {error['input']!r}")
    return "; ".join(problems)
