"""Settings for in-process tests: the values given and the defaults, nothing else."""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from orchestration.settings import Settings


class _GivenSettings(Settings):
    # pydantic-settings' hook for where values come from: only the keyword arguments, so
    # no TROUPE_* variable of the developer's shell reaches a test.
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def given_settings(**values: Any) -> Settings:
    """``Settings`` from ``values`` and the defaults, whatever the environment holds."""
    return _GivenSettings(**values)
