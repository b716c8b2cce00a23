"""One typed, frozen configuration, loaded once: flags > RUNE_* env > runefile.yaml > defaults.

``schema`` holds the settings tree (dataclasses and defaults), ``loading`` reads and merges the
sources, ``checks`` validates values and fills derived defaults.
"""

from __future__ import annotations

from runed.core.config.checks import (
    LOG_FORMATS,
    LOG_LEVELS,
    default_data_dir,
    origin_problem,
    parse_address,
    problems,
    validate,
)
from runed.core.config.loading import ENV_KEYS, load, read_file, unread_env
from runed.core.config.schema import (
    ApiLimitsConfig,
    AuthConfig,
    Config,
    ConfigError,
    ConfigmapConfig,
    ControllerConfig,
    CORSConfig,
    DockerConfig,
    EncryptionConfig,
    ExecConfig,
    HistoryConfig,
    KEKConfig,
    LimitsConfig,
    LogConfig,
    NodeTLSConfig,
    OIDCConfig,
    RateLimitConfig,
    RegistryAuth,
    RegistryEntry,
    SecretConfig,
    ServerConfig,
    StoreConfig,
    TLSConfig,
)

__all__ = [
    "ENV_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ApiLimitsConfig",
    "AuthConfig",
    "CORSConfig",
    "Config",
    "ConfigError",
    "ConfigmapConfig",
    "ControllerConfig",
    "DockerConfig",
    "EncryptionConfig",
    "ExecConfig",
    "HistoryConfig",
    "KEKConfig",
    "LimitsConfig",
    "LogConfig",
    "NodeTLSConfig",
    "OIDCConfig",
    "RateLimitConfig",
    "RegistryAuth",
    "RegistryEntry",
    "SecretConfig",
    "ServerConfig",
    "StoreConfig",
    "TLSConfig",
    "default_data_dir",
    "load",
    "origin_problem",
    "parse_address",
    "problems",
    "read_file",
    "unread_env",
    "validate",
]
