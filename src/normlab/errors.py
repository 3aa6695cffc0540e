"""Errors a user can fix. The entry points print them as one paragraph, without a traceback."""


class NormlabError(Exception):
    """Base class: the message names the setting at fault and how to fix it."""


class ConfigError(NormlabError):
    """A configuration value that cannot work."""


class DataError(NormlabError):
    """A dataset that is missing, unreadable or inconsistent."""
