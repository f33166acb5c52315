"""Locations as text: ``provider/region[/zone]`` cut into parts. A leaf module (errors only), so that
the home, the registry and the pools can name locations without the region catalog
(:mod:`spotshift.pricing.regions`, which re-exports these and checks that a region exists)."""

from __future__ import annotations

from spotshift.errors import ConfigError


def split_location(location: str, *, zone: bool = False) -> tuple[str, str]:
    """``"gcp/us-central1"`` -> ``("gcp", "us-central1")``, the provider lower-case; with ``zone``, a
    ``provider/region/zone`` is accepted too and its zone dropped. :class:`ConfigError` when malformed
    (whether the region exists is :func:`check_location`'s question).

    The one place a location is cut into its parts: nothing splits ``provider/region`` by hand.
    """
    parts = location.strip().split("/") if isinstance(location, str) else []
    if len(parts) not in ((2, 3) if zone else (2,)) or not all(parts):
        shape = "provider/region[/zone]" if zone else "provider/region"
        raise ConfigError(f"location {location!r} is not of the form {shape}")
    return parts[0].lower(), parts[1]


def region_of(location: str) -> str:
    """``provider/region[/zone]`` -> ``provider/region`` (the zone dropped); ConfigError when malformed."""
    provider, region = split_location(location, zone=True)
    return f"{provider}/{region}"


def zone_of(location: str) -> str:
    """The zone of a ``provider/region/zone`` location (``""`` without one); ConfigError when malformed."""
    split_location(location, zone=True)
    parts = location.strip().split("/")
    return parts[2] if len(parts) == 3 else ""


def provider_of(location: str) -> str:
    """The provider of a location, lower-case (``""`` for an empty string); no check of the rest."""
    return location.partition("/")[0].lower()
