"""The `[fleet]` config table and what it opens: the bucket, trusted keys, signing key.

Credentials never come from here: boto3's standard chain (environment, shared profile,
instance role) supplies them. An agent needs url, channel and public_keys; a build host
also signing_key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from .bucket import Bucket
    from .sign import PublicKey, SecretKey


@dataclass(frozen=True, eq=False, repr=False)
class Fleet:
    """[fleet]: the bucket, this host's channel and id, and the signing keys."""

    url: str = ""  # s3://BUCKET/PREFIX
    endpoint_url: str | None = None  # omit for AWS
    region: str | None = None
    channel: str = ""  # the agent's channel; the default for fleet commands
    host_id: str = ""  # default: the host name
    poll_s: float = 30.0
    public_keys: tuple[Path, ...] = ()
    signing_key: Path | None = None  # build hosts only
    # a pointer nobody re-signs within this time is refused by agents (freeze attack)
    pointer_ttl_s: float = 30 * 86400.0
    # the agent's Prometheus endpoint ("" = none)
    metrics_listen: str = ""
    # where the agent downloads to (outside the store: publish refuses sources in it);
    # default: a folder beside the store root, ROOT.incoming
    download_dir: Path | None = None
    # push: also upload zstd patches from this many earlier releases of the channel
    delta_bases: int = 2
    # push: the default wave plan ("" = every host at once; e.g. "1,25%,100%"), the
    # bake time between waves and the failures that abort a rollout (rollout.py)
    waves: str = ""
    bake_s: float = 300.0
    max_failures: int = 1

    def __post_init__(self) -> None:
        if self.url and (not self.url.startswith("s3://") or self.url == "s3://"):
            raise ValueError(f'url must be "s3://BUCKET/PREFIX", got "{self.url}"')
        if self.poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {self.poll_s}")
        if self.bake_s < 0 or self.max_failures < 1:
            raise ValueError("bake_s must be >= 0 and max_failures >= 1")
        if self.delta_bases < 0:
            raise ValueError(f"delta_bases must be >= 0, got {self.delta_bases}")
        if self.pointer_ttl_s <= 0:
            raise ValueError(f"pointer_ttl_s must be > 0, got {self.pointer_ttl_s}")


def fleet_of(config: Config) -> Fleet:
    fleet = getattr(config, "fleet", None)
    if not isinstance(fleet, Fleet) or not fleet.url:
        where = config.source or "the config"
        raise ConfigError(f"{where}: no [fleet] url; add [fleet] url = \"s3://BUCKET/PREFIX\"")
    return fleet


def download_dir(config: Config) -> Path:
    fleet = fleet_of(config)
    if fleet.download_dir is not None:
        return fleet.download_dir
    root = Path(config.root)
    return root.parent / f"{root.name}.incoming"


def host_id(fleet: Fleet) -> str:
    import socket  # here only: every command loads the settings, few need the host name

    from .layout import check_name

    return check_name(fleet.host_id or socket.gethostname().split(".")[0], "host_id")


def channel_of(fleet: Fleet, explicit: str | None) -> str:
    from .layout import check_name

    name = explicit or fleet.channel
    if not name:
        raise ConfigError("no channel: pass --channel NAME or set [fleet] channel")
    return check_name(name, "channel")


def open_bucket(fleet: Fleet) -> Bucket:
    from .bucket import Bucket

    return Bucket(fleet.url, endpoint_url=fleet.endpoint_url, region=fleet.region)


def trusted_keys(fleet: Fleet) -> list[PublicKey]:
    from .sign import PublicKey

    if not fleet.public_keys:
        raise ConfigError("[fleet] public_keys is empty: list the .pub files of the keys "
                          "allowed to sign releases")
    return [PublicKey.load(p) for p in fleet.public_keys]


def signing_key(fleet: Fleet) -> SecretKey:
    from .sign import SecretKey

    if fleet.signing_key is None:
        raise ConfigError("[fleet] signing_key is not set (needed on build hosts; make one "
                          "with `releaser fleet keygen`)")
    return SecretKey.load(fleet.signing_key)


def trusted_keys_or_empty(fleet: Fleet) -> list[PublicKey]:
    """The configured public keys, or none when public_keys is unset or unreadable."""
    from ..errors import ReleaserError

    try:
        return trusted_keys(fleet)
    except ReleaserError:
        return []


def publisher_keys(fleet: Fleet) -> tuple[SecretKey, list[PublicKey]]:
    """A build host's signing key and the keys it trusts: its own first, then the configured."""
    key = signing_key(fleet)
    return key, [key.public, *trusted_keys_or_empty(fleet)]
