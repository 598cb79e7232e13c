"""Configuration: the TOML file (``settings``), per-model profiles (``profiles``), and the one holder
every component reads from (``holder``)."""
from .holder import ConfigHolder, load_options_changed, plan_reload
from .profiles import Profile, ProfileError
from .settings import Config, ConfigError, HttpConfig, LlamaConfig, ServerConfig, from_dict, load, with_overrides

__all__ = ["Config", "ConfigError", "ConfigHolder", "LlamaConfig", "Profile", "ProfileError", "ServerConfig",
           "from_dict", "load", "load_options_changed", "plan_reload", "with_overrides"]
