"""Data for lowlight-qat: the SID loader (data.sid), the decoded-raw cache (data.raw_cache) and the
synthetic SID stand-in (data.synthetic).

Nothing is imported here on purpose: cache-building worker processes import data.raw_cache, and
going through this package should not pull torch into each of them.
"""
