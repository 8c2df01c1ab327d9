"""Moved to ``async_accept.frontdoor``."""

from .frontdoor import FRONT_DOORS, FrontDoor

__all__ = ["FRONT_DOORS", "FrontDoor"]
