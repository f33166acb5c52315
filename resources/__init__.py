"""Dagster resources: thin ConfigurableResource adapters from Dagster config to the spotshift library."""
