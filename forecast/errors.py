"""User errors: the CLI prints them as one line (`error: ...`) and exits with code 2, no traceback."""


class UserError(Exception):
    """Something the user can fix: a path, a ticker, a config value."""


class ConfigError(UserError, ValueError):
    """A config value that is out of range; `key` is its dotted name."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self):  # rebuilt from (key, message) when it crosses a process boundary
        return type(self), (self.key, self.message)

    def within(self, group: str) -> "ConfigError":
        """The same error with its key qualified by the config group that holds it."""
        return ConfigError(f"{group}.{self.key}", self.message)
