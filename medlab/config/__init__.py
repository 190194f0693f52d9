"""Config validation (all problems at once) and redaction of secrets."""

from medlab.config.validate import ConfigError, collect_problems, redact, validate_config

__all__ = ["ConfigError", "collect_problems", "redact", "validate_config"]
