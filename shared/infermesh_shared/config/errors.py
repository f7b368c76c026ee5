"""The one exception the config package raises, and how it is printed."""

from __future__ import annotations

EXIT_INVALID_CONFIG = 2


class ConfigError(Exception):
    """Invalid configuration; `causes` are the human-readable reasons, one per rule broken."""

    def __init__(self, causes: list[str] | str) -> None:
        self.causes = [causes] if isinstance(causes, str) else list(causes)
        super().__init__("; ".join(self.causes))

    def render(self) -> str:
        """The seed-000 error format: a headline, then one `  Caused by:` line per cause."""
        lines = ["Error: Configuration validation failed"]
        lines += [f"  Caused by: {cause}" for cause in self.causes]
        return "\n".join(lines) + "\n"
