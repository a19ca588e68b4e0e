"""User-facing errors: one line, naming the file, bag and field at fault."""
from __future__ import annotations


class ArcmilError(Exception):
    """An error caused by the user's input or settings; the CLI prints it as one line, exit 2."""


class DataError(ArcmilError):
    """Malformed Stage-2 bags."""

    def __init__(self, source: str, message: str, *, bag: object = None, field: str | None = None):
        where = [str(source)]
        if bag is not None:
            where.append(f"bag {bag!r}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}")


class ConfigError(ArcmilError):
    """Unknown or invalid settings."""


def check_choices(config, choices: dict[str, tuple]) -> None:
    """Refuse a setting of ``config`` (a dataclass) outside its choices: name -> valid values."""
    for name, valid in choices.items():
        if getattr(config, name) not in valid:
            raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {getattr(config, name)!r}")
