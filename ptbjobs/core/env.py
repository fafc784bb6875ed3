"""Settings read from the environment (PTBJOBS_*): checked, with one clear line when they are not numbers."""

from __future__ import annotations

import math
import os

from ptbjobs.core.errors import ConfigError


def seconds_from_env(name: str, default: float, maximum: float = math.inf) -> float:
    """$name as a number of seconds from 0 to `maximum`, else `default` where it is unset."""
    given = os.environ.get(name)
    if given is None:
        return default
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds <= maximum and math.isfinite(seconds)):
        allowed = ">= 0" if maximum == math.inf else f"from 0 to {maximum:g}"
        raise ConfigError(None, f"{name}: must be a number of seconds {allowed}, got {given!r}",
                          f"unset it for the default of {default:g} s")
    return seconds
