"""Who holds the checkpoint key-encryption key: the ``KeyProvider`` as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from spotshift.checkpoint.keys import KeyProvider, open_key_provider


class KeyProviderResource(dg.ConfigurableResource):
    """``local`` | ``local:/path`` | ``aws-kms:<key>[?region=..&endpoint=..]`` | ``gcp-kms:<key name>[?endpoint=..]``.

    Empty ``spec``: ``$SPOTSHIFT_KEY_PROVIDER``, else the local key file under ``$SPOTSHIFT_HOME``.
    """

    spec: str = ""

    def provider(self) -> KeyProvider:
        return open_key_provider(self.spec or None)

    def spec_or_none(self) -> str | None:
        """The spec to hand a trainer process (None: its own environment decides)."""
        return self.spec or None
