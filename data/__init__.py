"""Data for lowlight-qat: the data sets a config names (data.datasets: SID in data.sid, the DBF/DBLE
authors' MCR in data.mcr, a camera's own raw pairs in data.pairs), the decoded-raw cache
(data.raw_cache), raw metadata (data.raw_metadata) and the generated stand-ins (data.synthetic for
SID, data.synthetic_mcr for MCR and the pairs lists).

Nothing is imported here on purpose: cache-building worker processes import data.raw_cache, and
going through this package should not pull torch into each of them.
"""
