"""Tenants: API key records with scopes and quotas, their cache salt, and their metrics (docs/routing.md)."""
