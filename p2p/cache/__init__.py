"""The encrypted result cache (issue 10 item 3): a task whose result this network already
computed completes without inference.

- :mod:`p2p.cache.keys`: the two keys derived from the network key (HKDF) and the cache key of a
  task (an HMAC: the only thing lookups and the index ever show).
- :mod:`p2p.cache.seal`: AEAD sealing of an entry, bound to its cache key.
- :mod:`p2p.cache.store`: the SQLite file of sealed entries, LRU-bounded by ``cache.max_bytes``.
- :mod:`p2p.cache.remote`: asking peers that advertise the cache, and answering them
  (``/ipfs-accelerate/cache/1.0.0``, :mod:`p2p.protocols.cache`).
- :mod:`p2p.cache.cache`: :class:`ResultCache`, what the scheduler and the node use.
"""

from p2p.cache.cache import CacheEntry, ResultCache
from p2p.cache.keys import CacheKeys, cache_key, canonical_request

__all__ = ["CacheEntry", "CacheKeys", "ResultCache", "cache_key", "canonical_request"]
