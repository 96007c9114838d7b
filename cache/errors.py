"""What goes wrong with a teacher cache (below the store and its checker, which both raise them)."""

from hoicore.errors import HoiError


class CacheError(HoiError, ValueError):
    """A store that is missing, incomplete, damaged, malformed, or made with another configuration."""


class CacheMismatch(CacheError):
    """A store made with other settings than a command asks for (teacher, pair rule, dataset, levels)."""


class ChunkMisplaced(CacheError):
    """A chunk file whose bytes are not those finalize recorded under its key."""
