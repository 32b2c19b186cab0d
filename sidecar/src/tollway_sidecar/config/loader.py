"""Load a GatewayConfig from a file and follow it, keeping the last good config when one is bad."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from tollway_sidecar.config.models import GatewayConfig

log = logging.getLogger("tollway.config")


class ConfigError(Exception):
    pass


def parse_config(raw: bytes, source: str) -> GatewayConfig:
    try:
        config = GatewayConfig.model_validate_json(raw)
    except ValidationError as exc:
        # Field and reason only: pydantic's own message repeats the input, and a config carries
        # provider credentials.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise ConfigError(f"{source}: not a valid GatewayConfig: {problems}") from None
    expected = config.compute_checksum()
    if config.checksum and config.checksum != expected:
        raise ConfigError(
            f"{source}: checksum {config.checksum[:12]} does not match its content ({expected[:12]})"
        )
    return config if config.checksum else config.with_checksum()


def load_config_file(path: Path) -> GatewayConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(raw, str(path))


class FileWatcher:
    """Polls one file; calls `on_config` with each new valid config, logs and skips invalid ones."""

    def __init__(self, path: Path, on_config: Callable[[GatewayConfig], None], interval: float = 1.0) -> None:
        self.path = path
        self.on_config = on_config
        self.interval = interval
        self.last_digest: str | None = None
        self.last_error: str | None = None

    def check(self) -> bool:
        """Load the file if its content changed; True when a new config was applied."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            # Normal before the first config exists (an optional Secret volume, a folder not yet
            # compiled): nothing failed to load, so this is not an error.
            if self.last_error != "missing":
                log.info("no config file at %s yet; serving the current config", self.path)
            self.last_error = "missing"
            return False
        except OSError as exc:
            self._fail(f"{self.path}: cannot read: {exc.strerror}")
            return False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self.last_digest:
            return False
        self.last_digest = digest
        try:
            config = parse_config(raw, str(self.path))
        except ConfigError as exc:
            self._fail(str(exc))
            return False
        self.last_error = None
        self.on_config(config)
        return True

    def _fail(self, error: str) -> None:
        if error != self.last_error:
            log.error("keeping the previous config: %s", error)
        self.last_error = error

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
