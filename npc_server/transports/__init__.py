"""Transports: how clients reach sessions (`base.ClientLink` holds what they share)."""
